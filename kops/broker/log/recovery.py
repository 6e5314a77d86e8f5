"""Opening a partition directory: segment discovery, crash recovery, state rebuilds.

After an unclean shutdown only what may not have been flushed is re-validated,
as Kafka's LogLoader does: segments wholly below the recovery point (the offset
up to which the log was fsynced, from recovery-point-offset-checkpoint) are
trusted, and so is the segment holding it if nothing was written past it since.
The rest is re-validated batch by batch (size, offsets, CRC), the log cut at the
first bad byte and any later segments deleted. Like Kafka, a trusted segment's
batches are not CRC-checked on open; a byte corrupted on disk below the recovery
point is served as stored, and clients that check CRCs (check.crcs) reject it.
The leader-epoch cache and producer state (transactions included) are then
re-derived from batch headers; the replay reaches back to the first segment
whose indexes were rebuilt, to refill its aborted-transaction index (see
kops.broker.log.transactions). Before anything else, an interrupted compaction
swap (`.cleaned` / `.swap` files, see kops.broker.log.cleaner) is rolled back
or finished.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kops.broker.log.cleaner import finish_interrupted_swaps
from kops.broker.log.config import LogConfig
from kops.broker.log.epoch_cache import LeaderEpochCache
from kops.broker.log.producer_state import ProducerStateManager
from kops.broker.log.segment import LogSegment
from kops.broker.log.transactions import is_marker
from kops.protocol.batch import BatchHeader

__all__ = [
    "LoadedSegments",
    "iter_headers",
    "list_segment_bases",
    "load_segments",
    "rebuild_epoch_cache",
    "rebuild_producer_state",
    "restore_epoch_cache",
]

log = logging.getLogger(__name__)

_SEGMENT_SUFFIXES = (".log", ".index", ".timeindex", ".txnindex")


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
        elif ext in ("index", "timeindex", "txnindex"):
            orphans.append((int(stem), path))
    for base, path in orphans:
        if base not in bases:
            path.unlink(missing_ok=True)
    return sorted(bases)


@dataclass
class LoadedSegments:
    """What load_segments opened, and what an unclean open had to re-validate."""

    segments: list[LogSegment]  # never empty
    first_recovered: int | None = None  # base of the first re-validated segment
    recovered: int = 0  # segments re-validated batch by batch (CRC included)
    truncated_bytes: int = 0
    # Re-validated segments before the active one: not fsynced yet (a crash may
    # have left their last writes in the page cache only).
    unflushed: list[LogSegment] = field(default_factory=list)


def load_segments(
    directory: Path, config: LogConfig, *, recover: bool, recovery_point: int = 0
) -> LoadedSegments:
    """Open (and if `recover`, validate) all segments.

    With `recover` (no clean-shutdown marker), segments wholly below
    `recovery_point` are trusted: loaded as after a clean shutdown, their indexes
    rebuilt only if they fail the sanity checks. The segment holding the recovery
    point is trusted too if nothing in it lies at or past it (LogSegment.load_flushed).
    Every other segment is re-validated and the log cut at the first bad batch.
    A recovery point past the log end can't be true, so then every segment is
    re-validated. A compaction swap that a crash interrupted is rolled back or
    finished first.
    """
    finish_interrupted_swaps(directory)
    started = time.monotonic()
    bases = list_segment_bases(directory)
    loaded = _open_segments(directory, config, bases, recover, recovery_point)
    leo = loaded.segments[-1].next_offset
    if recover and bases and leo < recovery_point:
        log.warning(
            "%s: the recovery point %d is past the log end %d; re-validating every segment",
            directory.name,
            recovery_point,
            leo,
        )
        for segment in loaded.segments:
            segment.close_handles()
        recovery_point = 0
        loaded = _open_segments(directory, config, list_segment_bases(directory), True, 0)
    if recover:
        empty = all(segment.is_empty for segment in loaded.segments)
        log.log(
            logging.DEBUG if empty else logging.INFO,
            "%s: unclean shutdown: re-validated %d of %d segments from recovery point %d "
            "(%d bytes truncated) in %.3f s",
            directory.name,
            loaded.recovered,
            len(loaded.segments),
            recovery_point,
            loaded.truncated_bytes,
            time.monotonic() - started,
        )
    return loaded


def _open_segments(
    directory: Path, config: LogConfig, bases: list[int], recover: bool, recovery_point: int
) -> LoadedSegments:
    segments: list[LogSegment] = []
    loaded = LoadedSegments(segments)
    cut = False
    for i, base in enumerate(bases):
        segment = LogSegment(directory, base, config)
        if cut:
            log.warning("deleting segment %s after a truncated one", segment.log_path)
            segment.delete()
            continue
        below = i + 1 < len(bases) and bases[i + 1] <= recovery_point
        if not recover or below:
            segment.load()
        elif not (base <= recovery_point and segment.load_flushed(recovery_point)):
            min_offset = segments[-1].next_offset if segments else None
            lost = segment.recover(verify_crc=True, min_offset=min_offset)
            loaded.recovered += 1
            if loaded.first_recovered is None:
                loaded.first_recovered = base
            if lost:
                log.warning("recovery truncated %d bytes from %s", lost, segment.log_path)
                loaded.truncated_bytes = lost
                cut = True
            loaded.unflushed.append(segment)
        segments.append(segment)
    if not segments:
        segment = LogSegment(directory, 0, config)
        segment.create()
        segments.append(segment)
    if loaded.unflushed and loaded.unflushed[-1] is segments[-1]:
        loaded.unflushed.pop()  # the active segment: PartitionLog.flush syncs it anyway
    for segment in segments[:-1]:
        segment.close_handles()
    return loaded


def restore_epoch_cache(
    cache: LeaderEpochCache,
    segments: Sequence[LogSegment],
    first_recovered: int | None,
    log_start: int,
) -> None:
    """Load the epoch checkpoint, re-derive the part recovery re-validated (all of it if
    the file is unreadable), clip it to [log start, LEO] and write it back (unsynced)."""
    if not cache.load():
        cache.clear()
        rebuild_epoch_cache(cache, segments, segments[0].base_offset)
    elif first_recovered is not None:
        rebuild_epoch_cache(cache, segments, first_recovered)
    cache.truncate_from_end(segments[-1].next_offset)
    cache.truncate_from_start(log_start)
    cache.write()


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
    producers: ProducerStateManager,
    segments: Sequence[LogSegment],
    log_end_offset: int,
    replay_from: int | None = None,
) -> None:
    """Latest snapshot at or below the LEO (and `replay_from`), then replay the batch
    headers written after it.

    Markers are read (their one control record) to end transactions; an aborted one
    is indexed in the marker's segment, which adds nothing where the index has it
    already. `replay_from`: the base of the first segment whose txnindex was cleared.
    """
    producers.delete_snapshots_after(log_end_offset)
    limit = log_end_offset if replay_from is None else min(replay_from, log_end_offset)
    snapshot = producers.load_latest(limit)
    start = segments[0].base_offset if snapshot is None else snapshot
    i = max(0, bisect_right(segments, start, key=_base) - 1)
    for j in range(i, len(segments)):
        segment = segments[j]
        for position, header in segment.iter_headers(segment.index.lookup(start) if j == i else 0):
            if header.base_offset < start:
                continue
            if is_marker(header):
                producers.apply_marker(
                    header, segment.read(position, header.size), segment.txn_index
                )
            else:
                producers.update(header)
    for segment in segments:
        segment.reindexed = False
