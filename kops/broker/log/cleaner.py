"""Log compaction for `cleanup.policy=compact` (Kafka's LogCleaner, simplified).

What a pass does
    Only closed segments lying wholly below the last stable offset (so below the high
    watermark, and holding only decided transactions) are cleanable; the
    active segment is never read or written. A pass builds an offset map (key ->
    latest offset) from the *dirty* part of that range (offsets at or after the
    first dirty offset, i.e. not yet seen by a pass) and rewrites every cleanable
    segment, keeping a record iff no later record in the map has its key. Records
    with a null key are dropped (Kafka does the same; `PartitionLog.append` refuses
    them for compacted topics, so only data written before the topic became
    compacted has any). The offset map is soft-capped at `max_map_keys` keys: once a
    dirty segment takes it past the cap, the pass stops at that segment's end and
    the rest is cleaned by the next pass.

When a pass runs
    When the dirty ratio (bytes of cleanable segments holding dirty offsets / bytes of
    all cleanable segments) is at least `min.cleanable.dirty.ratio` (Kafka's default
    0.5; 0 cleans as soon as any closed segment is dirty), or when a tombstone kept by
    an earlier pass has become removable. `min.compaction.lag.ms` and
    `max.compaction.lag.ms` are not supported.

Tombstones (null value)
    Kafka's rule is that a tombstone stays readable for at least delete.retention.ms
    after the pass that first cleaned it (so a consumer that read the old value and
    reads on within that time also sees the delete). We keep exactly that rule with
    coarse bookkeeping: `cleaner-state.json` in the partition directory records, for
    the last passes, the dirty range each one cleaned for the first time and when.
    A tombstone is removed by a pass that runs at least delete.retention.ms after the
    pass that first cleaned its offset. When that history is missing (lost file,
    merged entries) the later time is assumed, so tombstones only ever live longer.
    Because the first pass that sees a tombstone also removes every older value of
    its key, the older values are gone for good before the tombstone can go.

Batches
    A batch whose records all stay is copied byte for byte (compressed or not). A
    batch that loses some records is rewritten *uncompressed* with the survivors'
    record bytes unchanged: the base offset, last offset delta, base timestamp,
    producer id/epoch/sequence and leader epoch stay as they were, so every kept
    record keeps its offset and the batch still spans the same offsets (the log end
    never moves). The max timestamp becomes the largest kept record's (CreateTime).
    A batch left with no records is dropped, unless it holds an active producer's
    last data offset: then it stays empty (kops.broker.log.txn_cleaning).

Transactions (kops.broker.log.txn_cleaning)
    Aborted transactions' records are removed and never enter the offset map;
    committed ones are compacted by key like the rest. A marker goes once no batch
    of its transaction is left and its delete horizon has passed; a group's
    aborted-transaction index keeps its members' entries of the transactions the
    pass left a batch of.

Segments and the swap
    Consecutive cleanable segments are merged into groups of at most segment.bytes
    (original sizes) and a 2^31 offset span; each group is written as one segment
    named after the group's first segment, in `<base>.log.cleaned` (+ `.index`,
    `.timeindex`, and `.txnindex` when an entry stays), fsynced, with the newest
    member's modification time (retention goes by it when a segment has no record
    timestamps). It then replaces the group as Kafka does:
      1. trailing members left with no batch are deleted outright (their records are
         superseded by later, durable ones, or aborted, their markers past their
         horizon: deleting them is safe at any time);
      2. `.index.cleaned` / `.timeindex.cleaned` (/ `.txnindex.cleaned`) are renamed
         to `.swap`, then `.log.cleaned` to `.log.swap` -- the commit point;
      3. the other old members are deleted;
      4. the `.swap` files are renamed over `<base>.index` / `.timeindex` / `.log`.
    At open, `finish_interrupted_swaps` rolls back (deletes `.cleaned` files and index
    `.swap`s when there is no `.log.swap`) or finishes (a `.log.swap` covering offsets
    [base, next offset) replaces every segment whose base lies in that range; indexes
    are rebuilt, the txnindex by the producer-state replay) an interrupted swap. A
    group always ends with a member that kept a batch, so that range covers exactly
    the group. The first segment of the log is never deleted (it carries the log start
    offset): if nothing at all survives in its group, it becomes an empty segment.

Threads
    `PartitionLog.begin_compaction` (event loop) snapshots the cleanable segments,
    `CleanJob.run` (any thread) does all reading, decoding and writing through its own
    file descriptors, and `PartitionLog.finish_compaction` (event loop) checks that the
    segments are unchanged (retention, DeleteRecords or truncation may have run
    meanwhile; then the work is discarded) and performs the swap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from kops.broker.log.checkpoint import fsync_dir
from kops.broker.log.cleaner_state import STATE_FILE, CleanerState
from kops.broker.log.config import CorruptRecordError, LogConfig
from kops.broker.log.index import OffsetIndex, TimeIndex
from kops.broker.log.segment import (
    MAX_RELATIVE_OFFSET,
    MIN_BATCH_LENGTH,
    LogSegment,
    segment_name,
)
from kops.broker.log.transactions import AbortedTxn, write_txn_index
from kops.broker.log.txn_cleaning import TxnCleaning, empty_batch
from kops.errors import KopsError
from kops.protocol.batch import (
    HEADER_SIZE,
    BatchHeader,
    InvalidBatchError,
    decompress,
    iter_raw_records,
    parse_header,
    rebuild_batch,
)

__all__ = [
    "CLEANED_SUFFIX",
    "DEFAULT_MAX_MAP_KEYS",
    "STATE_FILE",
    "SWAP_SUFFIX",
    "CleanJob",
    "CleanStats",
    "CleanerState",
    "commit",
    "finish_interrupted_swaps",
]

log = logging.getLogger(__name__)

CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"
DEFAULT_MAX_MAP_KEYS = 1_000_000
READ_CHUNK = 4 * 1024 * 1024
WRITE_CHUNK = 1024 * 1024
_SEGMENT_EXTS = ("log", "index", "timeindex", "txnindex")

# Tests replace this to stop a swap half-way, as a crash would (see _step).
crash_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if crash_hook is not None:
        crash_hook(name)


@dataclass
class CleanStats:
    logs_cleaned: int = 0
    segments_read: int = 0
    segments_written: int = 0
    segments_deleted: int = 0  # old segments replaced or deleted
    bytes_read: int = 0
    bytes_written: int = 0
    records_read: int = 0
    records_removed: int = 0  # superseded, keyless or expired tombstones
    tombstones_removed: int = 0
    batches_rewritten: int = 0
    batches_removed: int = 0
    aborted_records_removed: int = 0  # records of aborted transactions (also in records_removed)
    markers_removed: int = 0

    def add(self, other: CleanStats) -> CleanStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass(frozen=True)
class Member:
    """A cleanable segment as it was when the job was planned."""

    segment: LogSegment
    base: int
    size: int
    next_offset: int
    next_base: int  # base offset of the segment after it
    index_entries: int
    time_entries: int
    aborted: tuple[AbortedTxn, ...] = ()  # its txnindex entries

    @property
    def log_path(self) -> Path:
        return self.segment.log_path

    @classmethod
    def of(cls, segment: LogSegment, next_base: int) -> Member:
        return cls(
            segment,
            segment.base_offset,
            segment.size,
            segment.next_offset,
            next_base,
            len(segment.index),
            len(segment.time_index),
            tuple(segment.txn_index.entries),
        )


@dataclass
class _Group:
    members: list[Member]
    has_output: list[bool] = field(default_factory=list)
    changed: bool = False
    swap: bool = False  # a cleaned segment replaces members[:covered]
    covered: int = 0
    trailing: list[Member] = field(default_factory=list)  # deleted outright
    written: int = 0
    aborted: list[AbortedTxn] = field(default_factory=list)  # the cleaned txnindex

    @property
    def base(self) -> int:
        return self.members[0].base

    @property
    def skip(self) -> bool:
        return not self.swap and not self.trailing


class _Cancelled(KopsError):
    pass


def _paths(directory: Path, base: int, suffix: str) -> dict[str, Path]:
    name = segment_name(base)
    return {ext: directory / f"{name}.{ext}{suffix}" for ext in _SEGMENT_EXTS}


def _read_batches(
    fd: int, size: int, *, chunk: int = READ_CHUNK
) -> Iterator[tuple[int, BatchHeader, bytes]]:
    """(position, header, raw batch) for each whole batch of an open segment file."""
    position = 0
    want = chunk
    while position + HEADER_SIZE <= size:
        buf = os.pread(fd, min(max(want, chunk), size - position), position)
        want = chunk
        n = len(buf)
        p = 0
        need = 0
        while p + HEADER_SIZE <= n:
            header = parse_header(buf, p)
            if header.batch_length < MIN_BATCH_LENGTH:
                raise CorruptRecordError(f"bad batch length at {position + p}")
            batch_size = header.batch_length + 12
            if p + batch_size > n:
                need = batch_size
                break
            yield position + p, header, buf[p : p + batch_size]
            p += batch_size
        if p == 0:
            if need and position + need <= size:
                want = need
                continue
            return
        position += p


class CleanJob:
    """One cleaning pass over one partition log; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        members: Sequence[Member],
        state: CleanerState,
        config: LogConfig,
        now_ms: int,
        *,
        txns: TxnCleaning,
        max_map_keys: int = DEFAULT_MAX_MAP_KEYS,
    ) -> None:
        self.directory = directory
        self.txns = txns
        self.members = list(members)
        self.state = state
        self.config = config
        self.now_ms = now_ms
        self.max_map_keys = max_map_keys
        self.end_index = len(self.members)  # members[:end_index] are cleaned
        self.groups: list[_Group] = []
        self.new_state: CleanerState | None = None
        self.stats = CleanStats()
        self.error: BaseException | None = None
        self.finished = False
        self._cancel = threading.Event()
        self._due: int | None = None

    # --- control --------------------------------------------------------------------

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise _Cancelled()

    def discard(self) -> None:
        """Remove this job's `.cleaned` files (a job that was cancelled may still be writing)."""
        if self.cancelled and not self.finished:
            return
        for group in self.groups:
            for path in _paths(self.directory, group.base, CLEANED_SUFFIX).values():
                path.unlink(missing_ok=True)

    # --- the heavy part (any thread) -------------------------------------------------

    def run(self) -> None:
        """Read, decode and write; never raises (see `error`). Safe off the event loop."""
        try:
            self._run()
        except Exception as exc:
            self.error = exc
        finally:
            self.finished = True
        if self.error is not None and not self.cancelled:
            with contextlib.suppress(OSError):
                self.discard()

    def _open(self, member: Member) -> int:
        return os.open(member.log_path, os.O_RDONLY)

    def _batches(self, member: Member) -> Iterator[tuple[int, BatchHeader, bytes]]:
        fd = self._open(member)
        try:
            yield from _read_batches(fd, member.size)
        finally:
            os.close(fd)

    def _run(self) -> None:
        # What supersedes a record must be on disk before the record is dropped.
        for member in self.members:
            fd = self._open(member)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        offset_map = self._build_map()
        retention = self.config.delete_retention_ms
        horizon = self.state.horizon(self.now_ms, retention)
        self.groups = self._plan_groups(self.members[: self.end_index])
        for group in self.groups:
            self._write_group(group, offset_map, horizon)
        state = self.state.copy()
        state.record_pass(self.members[self.end_index - 1].next_base, self.now_ms, retention)
        dues = [due for due in (self._due, self.txns.due) if due is not None]
        state.tombstone_due_ms = min(dues, default=None)
        self.stats.markers_removed = self.txns.markers_removed
        self.new_state = state

    def _build_map(self) -> dict[bytes, int]:
        dirty = self.state.dirty_offset
        offset_map: dict[bytes, int] = {}
        for i, member in enumerate(self.members):
            if member.next_offset <= dirty:
                continue
            for _, header, raw in self._batches(member):
                self._check_cancel()
                if header.is_control or header.last_offset < dirty or self.txns.is_aborted(header):
                    continue
                try:
                    body = decompress(header.compression, memoryview(raw)[HEADER_SIZE:])
                    records = list(iter_raw_records(body, header.records_count))
                except InvalidBatchError as exc:
                    log.warning(
                        "compaction: keeping unreadable batch at offset %d in %s: %s",
                        header.base_offset,
                        member.log_path,
                        exc,
                    )
                    continue
                base = header.base_offset
                for rec in records:
                    offset = base + rec.offset_delta
                    if rec.key is not None and offset >= dirty:
                        offset_map[rec.key] = offset
            if len(offset_map) > self.max_map_keys and i + 1 < len(self.members):
                self.end_index = i + 1
                break
        return offset_map

    def _plan_groups(self, members: list[Member]) -> list[_Group]:
        limit = self.config.segment_bytes
        max_index = self.config.segment_index_bytes // 8
        max_time = self.config.segment_index_bytes // 12
        groups: list[_Group] = []
        current: list[Member] = []
        size = entries = time_entries = 0
        for member in members:
            if current and (
                size + member.size > limit
                or member.next_offset - current[0].base - 1 > MAX_RELATIVE_OFFSET
                or entries + member.index_entries > max_index
                or time_entries + member.time_entries + 1 > max_time
            ):
                groups.append(_Group(current))
                current, size, entries, time_entries = [], 0, 0, 0
            current.append(member)
            size += member.size
            entries += member.index_entries
            time_entries += member.time_entries + 1
        if current:
            groups.append(_Group(current))
        return groups

    def _filter(
        self,
        header: BatchHeader,
        raw: bytes,
        offset_map: dict[bytes, int],
        horizon: int,
        path: Path,
    ) -> bytes | None:
        """The batch as it should be written after cleaning; None when nothing stays."""
        stats = self.stats
        if header.is_control:
            stats.records_read += max(header.records_count, 0)
            return self.txns.marker(header, raw, self.now_ms, self.config.delete_retention_ms)
        if self.txns.is_aborted(header):
            count = max(header.records_count, 0)
            stats.records_read += count
            stats.records_removed += count
            stats.aborted_records_removed += count
            return self._emptied(header, raw)
        try:
            body = decompress(header.compression, memoryview(raw)[HEADER_SIZE:])
            records = list(iter_raw_records(body, header.records_count))
        except InvalidBatchError as exc:
            log.warning(
                "compaction: keeping unreadable batch at offset %d in %s: %s",
                header.base_offset,
                path,
                exc,
            )
            return raw
        stats.records_read += len(records)
        base = header.base_offset
        kept: list[bytes] = []
        max_ts = -1
        removed = 0
        retention = self.config.delete_retention_ms
        for rec in records:
            offset = base + rec.offset_delta
            key = rec.key
            if key is None:
                removed += 1
                continue
            latest = offset_map.get(key)
            if latest is not None and latest > offset:
                removed += 1
                continue
            if rec.null_value:
                if offset < horizon:
                    removed += 1
                    stats.tombstones_removed += 1
                    continue
                first = self.state.first_cleaned_ms(offset)
                due = (self.now_ms if first is None else first) + retention
                if self._due is None or due < self._due:
                    self._due = due
            kept.append(body[rec.start : rec.end])
            max_ts = max(max_ts, header.base_timestamp + rec.timestamp_delta)
        stats.records_removed += removed
        if not kept:
            return self._emptied(header, raw)
        if not removed:
            return raw
        stats.batches_rewritten += 1
        if header.log_append_time:
            max_ts = header.max_timestamp
        return rebuild_batch(header, b"".join(kept), len(kept), max_ts)

    def _emptied(self, header: BatchHeader, raw: bytes) -> bytes | None:
        """A batch left without records: dropped, unless it is an active producer's last
        (kept empty, for the producer state a replay rebuilds)."""
        if not self.txns.is_producer_tail(header):
            self.stats.batches_removed += 1
            return None
        if header.records_count == 0:
            return raw
        self.stats.batches_rewritten += 1
        return empty_batch(header)

    def _write_group(self, group: _Group, offset_map: dict[bytes, int], horizon: int) -> None:
        paths = _paths(self.directory, group.base, CLEANED_SUFFIX)
        for path in paths.values():
            path.unlink(missing_ok=True)  # stale output of an abandoned job
        interval = self.config.index_interval_bytes
        idx_offsets, idx_positions = array("q"), array("q")
        ts_values, ts_offsets = array("q"), array("q")
        max_ts, max_ts_offset, since_index, position = -1, -1, 0, 0
        group.has_output = [False] * len(group.members)
        pending = bytearray()
        fd = os.open(paths["log"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for i, member in enumerate(group.members):
                self.stats.segments_read += 1
                self.stats.bytes_read += member.size
                for _, header, raw in self._batches(member):
                    self._check_cancel()
                    out = self._filter(header, raw, offset_map, horizon, member.log_path)
                    if out is not raw:
                        group.changed = True
                    if out is None:
                        continue
                    if header.is_transactional and not header.is_control:
                        self.txns.written(header)
                    group.has_output[i] = True
                    out_header = header if out is raw else parse_header(out)
                    last_offset = out_header.last_offset
                    if out_header.max_timestamp > max_ts:
                        max_ts, max_ts_offset = out_header.max_timestamp, last_offset
                    # The same sparse-index rule as LogSegment appends and recovery.
                    if since_index > interval:
                        idx_offsets.append(last_offset)
                        idx_positions.append(position)
                        if not ts_values or max_ts > ts_values[-1]:
                            ts_values.append(max_ts)
                            ts_offsets.append(max_ts_offset)
                        since_index = 0
                    since_index += len(out)
                    position += len(out)
                    pending += out
                    if len(pending) >= WRITE_CHUNK:
                        _write_all(fd, pending)
                        pending.clear()
            if pending:
                _write_all(fd, pending)
            os.fsync(fd)
        finally:
            os.close(fd)
        # A closed segment's final time entry (LogSegment.on_roll does the same).
        if max_ts >= 0 and (not ts_values or max_ts > ts_values[-1]):
            ts_values.append(max_ts)
            ts_offsets.append(max_ts_offset)
        group.written = position

        last = max((i for i, has in enumerate(group.has_output) if has), default=-1)
        if last >= 0:
            group.covered = last + 1
        elif group.members[0] is self.members[0]:
            group.covered = 1  # the log's first segment stays, if need be empty
        group.swap = group.covered > 0
        group.trailing = group.members[group.covered :]
        if len(group.members) == 1 and not group.changed:
            group.swap, group.trailing = False, []  # nothing to gain from a rewrite
        if not group.swap:
            for path in paths.values():
                path.unlink(missing_ok=True)
            return
        # Keep the newest member's modification time, as Kafka does: retention falls
        # back to it for a segment without record timestamps (an emptied one, say).
        mtime = max(os.stat(member.log_path).st_mtime_ns for member in group.members)
        os.utime(paths["log"], ns=(mtime, mtime))
        index = OffsetIndex(paths["index"], group.base, max(1, len(idx_offsets)))
        index.replace_all(idx_offsets, idx_positions)
        index.flush()
        index.close()
        time_index = TimeIndex(paths["timeindex"], group.base, max(1, len(ts_values)))
        time_index.replace_all(ts_values, ts_offsets)
        time_index.flush()
        time_index.close()
        # A trailing member kept no marker, so none of its entries stays.
        group.aborted = self.txns.kept_entries(e for m in group.members for e in m.aborted)
        if group.aborted:
            write_txn_index(paths["txnindex"], group.aborted)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])


# --- the swap (event loop) ----------------------------------------------------------------


def commit(job: CleanJob, segments: list[LogSegment], config: LogConfig) -> list[LogSegment] | None:
    """Swap the job's cleaned segments in; returns the new segment list.

    None (nothing touched) when the cleaned segments changed since the job was planned.
    """
    cleaned = job.members[: job.end_index]
    if len(segments) <= len(cleaned):
        return None
    for member, segment in zip(cleaned, segments, strict=False):
        if segment is not member.segment or segment.size != member.size:
            return None
    directory = job.directory
    out: list[LogSegment] = []
    for group in job.groups:
        if group.skip:
            out.extend(m.segment for m in group.members)
            continue
        new = _swap_group(directory, group, config)
        job.stats.segments_deleted += len(group.members)
        if new is not None:
            out.append(new)
            job.stats.segments_written += 1
            job.stats.bytes_written += group.written
    if job.stats.segments_read:
        job.stats.logs_cleaned = 1
    return out + segments[len(cleaned) :]


def _swap_group(directory: Path, group: _Group, config: LogConfig) -> LogSegment | None:
    for member in group.members:
        member.segment.close_handles()
    _step("cleaned")
    for member in group.trailing:
        member.segment.delete()  # unlinks the .log first
    _step("trailing-deleted")
    if not group.swap:
        fsync_dir(directory)
        return None
    cleaned = _paths(directory, group.base, CLEANED_SUFFIX)
    swap = _paths(directory, group.base, SWAP_SUFFIX)
    os.rename(cleaned["index"], swap["index"])
    os.rename(cleaned["timeindex"], swap["timeindex"])
    if group.aborted:
        os.rename(cleaned["txnindex"], swap["txnindex"])
    _step("index-swap")
    os.rename(cleaned["log"], swap["log"])  # the commit point
    fsync_dir(directory)
    _step("log-swap")
    for member in group.members[1 : group.covered]:
        member.segment.delete()
    _step("old-deleted")
    first = group.members[0].segment
    os.replace(swap["index"], first.index.path)
    os.replace(swap["timeindex"], first.time_index.path)
    if group.aborted:
        os.replace(swap["txnindex"], first.txn_index.path)
    else:  # its entries, if any, went with their markers' transactions' data
        first.txn_index.path.unlink(missing_ok=True)
    _step("index-final")
    os.replace(swap["log"], first.log_path)
    fsync_dir(directory)
    _step("swapped")
    segment = LogSegment(directory, group.base, config)
    segment.load()
    segment.close_handles()
    return segment


# --- recovery at open ----------------------------------------------------------------------


def _next_offset(path: Path, base: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        next_offset = base
        for _, header, _raw in _read_batches(fd, size):
            next_offset = header.last_offset + 1
        return next_offset
    finally:
        os.close(fd)


def finish_interrupted_swaps(directory: Path) -> int:
    """Roll back or finish a swap a crash interrupted; returns how many were finished."""
    swaps: list[int] = []
    changed = False
    for path in list(directory.iterdir()):
        name = path.name
        if name.endswith(CLEANED_SUFFIX):
            path.unlink(missing_ok=True)
            changed = True
        elif name.endswith(SWAP_SUFFIX):
            stem, _, rest = name.partition(".")
            if rest == f"log{SWAP_SUFFIX}" and len(stem) == 20 and stem.isdigit():
                swaps.append(int(stem))
            else:
                path.unlink(missing_ok=True)  # index swaps: indexes are rebuilt
                changed = True
    if swaps:
        bases = sorted(
            int(p.name[:20])
            for p in directory.glob("*.log")
            if len(p.name) == 24 and p.name[:20].isdigit()
        )
        for base in sorted(swaps):
            swap_path = directory / f"{segment_name(base)}.log{SWAP_SUFFIX}"
            end = max(_next_offset(swap_path, base), base + 1)
            log.warning(
                "finishing an interrupted compaction swap of %s (offsets %d..%d)",
                swap_path,
                base,
                end - 1,
            )
            for old in bases:
                if base <= old < end:
                    for path in _paths(directory, old, "").values():
                        path.unlink(missing_ok=True)
            os.replace(swap_path, directory / f"{segment_name(base)}.log")
        changed = True
    if changed:
        fsync_dir(directory)
    return len(swaps)
