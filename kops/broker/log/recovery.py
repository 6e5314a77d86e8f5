"""Opening a partition directory: segment discovery, crash recovery, state rebuilds.

After an unclean shutdown every segment from the one holding the recovery point
on is re-validated batch by batch (size, offsets, CRC). The log is cut at the
first bad byte and any later segments are deleted, exactly like Kafka's
LogLoader. The leader-epoch cache and producer state are then re-derived from
batch headers. Before anything else, an interrupted compaction swap (`.cleaned` /
`.swap` files, see kops.broker.log.cleaner) is rolled back or finished.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from pathlib import Path

from kops.broker.log.cleaner import finish_interrupted_swaps
from kops.broker.log.config import LogConfig
from kops.broker.log.epoch_cache import LeaderEpochCache
from kops.broker.log.producer_state import ProducerStateManager
from kops.broker.log.segment import LogSegment
from kops.protocol.batch import BatchHeader

__all__ = [
    "iter_headers",
    "list_segment_bases",
    "load_segments",
    "rebuild_epoch_cache",
    "rebuild_producer_state",
]

log = logging.getLogger(__name__)

_SEGMENT_SUFFIXES = (".log", ".index", ".timeindex")


def _base(segment: LogSegment) -> int:
    return segment.base_offset


def list_segment_bases(directory: Path) -> list[int]:
    """Base offsets of the `.log` files; removes leftover temp files and orphaned indexes."""
    bases: set[int] = set()
    orphans = []
    for path in directory.iterdir():
        name = path.name
        if name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        stem, _, ext = name.partition(".")
        if len(stem) != 20 or not stem.isdigit():
            continue
        if ext == "log":
            bases.add(int(stem))
        elif ext in ("index", "timeindex"):
            orphans.append((int(stem), path))
    for base, path in orphans:
        if base not in bases:
            path.unlink(missing_ok=True)
    return sorted(bases)


def load_segments(
    directory: Path, config: LogConfig, *, recover: bool, recovery_point: int = 0
) -> tuple[list[LogSegment], int | None]:
    """Open (and if `recover`, validate) all segments.

    Returns the segments, never empty, and the base offset of the first segment that
    was recovered (None when nothing was), from where derived state must be rebuilt.
    A compaction swap that a crash interrupted is rolled back or finished first.
    """
    finish_interrupted_swaps(directory)
    bases = list_segment_bases(directory)
    first_recovered_idx = len(bases)
    if recover and bases:
        first_recovered_idx = max(0, bisect_right(bases, recovery_point) - 1)
    segments: list[LogSegment] = []
    cut = False
    for i, base in enumerate(bases):
        segment = LogSegment(directory, base, config)
        if cut:
            log.warning("deleting segment %s after a truncated one", segment.log_path)
            segment.delete()
            continue
        if i >= first_recovered_idx:
            min_offset = segments[-1].next_offset if segments else None
            lost = segment.recover(verify_crc=True, min_offset=min_offset)
            if lost:
                log.warning("recovery truncated %d bytes from %s", lost, segment.log_path)
                cut = True
        else:
            segment.load()
        segments.append(segment)
    if not segments:
        segment = LogSegment(directory, 0, config)
        segment.create()
        segments.append(segment)
    for segment in segments[:-1]:
        segment.close_handles()
    first_recovered = bases[first_recovered_idx] if first_recovered_idx < len(bases) else None
    return segments, first_recovered


def iter_headers(segments: Sequence[LogSegment], from_offset: int) -> Iterator[BatchHeader]:
    """Headers of every batch whose last offset is >= from_offset, across segments."""
    i = max(0, bisect_right(segments, from_offset, key=_base) - 1)
    for j in range(i, len(segments)):
        segment = segments[j]
        start = segment.index.lookup(from_offset) if j == i else 0
        for _, header in segment.iter_headers(start):
            if header.base_offset + header.last_offset_delta >= from_offset:
                yield header


def rebuild_epoch_cache(
    cache: LeaderEpochCache, segments: Sequence[LogSegment], from_offset: int
) -> None:
    """Re-derive epochs starting at or after from_offset from the partition leader epoch fields."""
    cache.truncate_from_end(from_offset)
    for header in iter_headers(segments, from_offset):
        cache.assign(header.partition_leader_epoch, header.base_offset)


def rebuild_producer_state(
    producers: ProducerStateManager, segments: Sequence[LogSegment], log_end_offset: int
) -> None:
    """Latest snapshot at or below the LEO, then replay the batch headers written after it."""
    producers.delete_snapshots_after(log_end_offset)
    snapshot = producers.load_latest(log_end_offset)
    start = segments[0].base_offset if snapshot is None else snapshot
    for header in iter_headers(segments, start):
        if header.base_offset >= start:
            producers.update(header)
