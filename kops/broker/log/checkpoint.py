"""Small text checkpoint files, written atomically (temp file + rename)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["fsync_dir", "read_offset_checkpoint", "write_atomic", "write_offset_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 0


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, *, fsync: bool = True) -> None:
    """Replace `path` so readers see either the old or the new content, never a mix."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, raw)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def read_offset_checkpoint(path: Path) -> dict[tuple[str, int], int]:
    """Parse `0\\n<n>\\n<topic> <partition> <offset>\\n...`; a missing or malformed file is
    empty (Kafka too carries on without it, with a warning: offsets default from the log)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return {}
    try:
        if int(lines[0]) != CHECKPOINT_VERSION:
            raise ValueError(f"unknown version {lines[0]!r}")
        count = int(lines[1])
        out: dict[tuple[str, int], int] = {}
        for line in lines[2 : 2 + count]:
            topic, partition, offset = line.rsplit(" ", 2)
            out[(topic, int(partition))] = int(offset)
        if len(out) != count:
            raise ValueError(f"{len(out)} distinct entries, {count} announced")
        return out
    except (IndexError, ValueError) as exc:
        log.warning("ignoring malformed checkpoint %s: %s", path, exc)
        return {}


def write_offset_checkpoint(
    path: Path, entries: Mapping[tuple[str, int], int], *, fsync: bool = True
) -> None:
    lines = [str(CHECKPOINT_VERSION), str(len(entries))]
    lines += [
        f"{topic} {partition} {offset}" for (topic, partition), offset in sorted(entries.items())
    ]
    write_atomic(path, "\n".join(lines) + "\n", fsync=fsync)
