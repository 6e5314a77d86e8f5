"""PartitionLog: the segmented on-disk log of one topic partition.

Not thread-safe: the broker serialises calls per partition. The produce and fetch
paths touch only batch headers and raw byte ranges, never individual records, with
one exception: appends to a compacted topic decode every record's key to refuse
null keys as Kafka does. Compacted topics are low-volume (__consumer_offsets,
cancel and state topics), so that cost is confined to them.

Compaction (`compact`, or `begin_compaction` / `CleanJob.run` /
`finish_compaction` to run the heavy part off the event loop) is described in
kops.broker.log.cleaner. Transactions (markers, the last stable offset, the
aborted-transaction indexes) in kops.broker.log.transactions: markers are the
other batches whose one record is decoded, where they are written or replayed.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path

from kops.broker.log.checkpoint import fsync_dir
from kops.broker.log.cleaner import (
    DEFAULT_MAX_MAP_KEYS,
    STATE_FILE,
    CleanerState,
    CleanJob,
    CleanStats,
    Member,
    commit,
    finish_interrupted_swaps,
)
from kops.broker.log.config import (
    AppendResult,
    CorruptRecordError,
    DuplicateSequenceError,
    InvalidRecordError,
    LogConfig,
    LogError,
    OffsetOutOfRangeError,
    RecordBatchTooLargeError,
    RecordTooLargeError,
    UnexpectedAppendOffsetError,
    UnsupportedForMessageFormatError,
)
from kops.broker.log.epoch_cache import CHECKPOINT_NAME, LeaderEpochCache
from kops.broker.log.max_timestamp import TimestampAndOffset, batch_records, max_timestamp_record
from kops.broker.log.producer_state import ProducerEntry, ProducerStateManager, tracks
from kops.broker.log.recovery import load_segments, rebuild_producer_state, restore_epoch_cache
from kops.broker.log.retention import closed_below, deletable_segments
from kops.broker.log.segment import BatchMeta, LogSegment, whole_batches
from kops.broker.log.transactions import collect_aborted, is_marker
from kops.broker.log.txn_cleaning import TxnCleaning
from kops.protocol.batch import (
    HEADER_SIZE,
    BatchHeader,
    InvalidBatchError,
    build_marker,
    null_key_records,
    rewrite_base_offset_and_epoch,
    set_log_append_time,
    validate_batches,
)

__all__ = ["PartitionLog"]

log = logging.getLogger(__name__)

_BATCH_ERRORS: dict[int, type[LogError]] = {
    CorruptRecordError.error_code: CorruptRecordError,
    UnsupportedForMessageFormatError.error_code: UnsupportedForMessageFormatError,
    InvalidRecordError.error_code: InvalidRecordError,
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _base(segment: LogSegment) -> int:
    return segment.base_offset


def _check_keys(
    records: bytes | bytearray | memoryview, headers: list[tuple[int, BatchHeader]]
) -> None:
    """Compacted topics refuse records without a key (Kafka: INVALID_RECORD since 2.5)."""
    mv = records if isinstance(records, memoryview) else memoryview(records)
    keyless: list[int] = []
    first_index = 0  # KIP-467 counts records across the request's batches
    for pos, header in headers:
        if not header.is_control:
            try:
                missing = null_key_records(mv[pos : pos + header.size])
            except InvalidBatchError as exc:
                raise _BATCH_ERRORS.get(exc.error_code, CorruptRecordError)(exc.message) from exc
            keyless.extend(first_index + index for index in missing)
        first_index += header.records_count
    if keyless:
        reason = "Compacted topic cannot accept message without key"
        raise InvalidRecordError(reason, record_errors=[(index, reason) for index in keyless])


def _validate(
    records: bytes | bytearray | memoryview, *, strict: bool = True
) -> list[tuple[int, BatchHeader]]:
    try:
        return validate_batches(records, strict=strict)
    except InvalidBatchError as exc:
        raise _BATCH_ERRORS.get(exc.error_code, CorruptRecordError)(exc.message) from exc


class PartitionLog:
    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        *,
        recover: bool,
        log_start_offset: int | None = None,
        recovery_point: int = 0,
    ) -> None:
        """Open or create the log in `directory`.

        recover=True after an unclean shutdown: what may not have been flushed
        (see kops.broker.log.recovery) is validated and cut at the first bad batch.
        `log_start_offset` comes from the log manager's checkpoint (DeleteRecords
        may have moved it inside the first segment).
        """
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._config = config
        self._epochs = LeaderEpochCache(self.directory / CHECKPOINT_NAME)
        self._epochs_synced = True
        self._producers = ProducerStateManager(self.directory)
        self._unflushed: list[LogSegment] = []  # rolled segments not yet fsynced
        self._closed = False
        self._cleaning: CleanJob | None = None  # a compaction between begin and finish
        self._cleaner_state: CleanerState | None = None  # loaded on first use
        # Called after the log start offset moves so the owner can checkpoint it.
        self.on_log_start_offset_change: Callable[[PartitionLog], None] | None = None
        # What replication-offset-checkpoint said at open (set by the LogManager).
        self.checkpointed_high_watermark: int | None = None

        loaded = load_segments(
            self.directory, config, recover=recover, recovery_point=recovery_point
        )
        self._segments, self._unflushed = loaded.segments, loaded.unflushed
        self.recovered_segments = loaded.recovered  # re-validated by this open
        self._log_start = self._segments[0].base_offset
        if log_start_offset is not None and log_start_offset > self._log_start:
            if log_start_offset > self.log_end_offset:
                # Everything we still have was already deleted by DeleteRecords/retention.
                self._replace_segments(log_start_offset)
            self._log_start = log_start_offset

        leo = self.log_end_offset
        restore_epoch_cache(self._epochs, self._segments, loaded.first_recovered, self._log_start)
        self._epochs_synced = False

        self._rebuild_producer_state()
        for segment in self._segments[:-1]:
            segment.close_handles()  # the rebuild scans may have opened them

        self._hw = self._log_start
        self.recovery_point = min(recovery_point, leo) if recover else leo
        if loaded.recovered:  # sync what was re-validated, so the point moves to the LEO
            self._producers.take_snapshot(leo, fsync=True)
            self.flush()

    # --- properties ---------------------------------------------------------------------

    @property
    def config(self) -> LogConfig:
        return self._config

    def update_config(self, config: LogConfig) -> None:
        self._config = config
        for segment in self._segments:
            segment.index_interval = config.index_interval_bytes

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def high_watermark(self) -> int:
        return self._hw

    @high_watermark.setter
    def high_watermark(self, value: int) -> None:
        self._hw = max(self._log_start, min(value, self.log_end_offset))

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return [segment.base_offset for segment in self._segments]

    @property
    def producers(self) -> dict[int, ProducerEntry]:
        """Idempotent producer state by producer id (read-only view for handlers and tests)."""
        return self._producers.producers

    @property
    def ongoing_transactions(self) -> dict[int, int]:
        """Producer id -> first offset of its ongoing transaction here (read-only view)."""
        return self._producers.txns.ongoing

    @property
    def last_stable_offset(self) -> int:
        """The high watermark, or the first offset of the earliest transaction still
        undecided there (ongoing, or its marker not below the high watermark yet);
        never below the log start."""
        first = self._producers.txns.first_unstable_offset(self._hw)
        return self._hw if first is None else max(self._log_start, min(self._hw, first))

    def aborted_transactions(self, fetch_offset: int, upper_bound: int) -> list[tuple[int, int]]:
        """(producer id, first offset) of each aborted transaction with its marker at or
        after fetch_offset and its first offset below upper_bound."""
        i = max(0, bisect_right(self._segments, fetch_offset, key=_base) - 1)
        indexes = (segment.txn_index for segment in self._segments[i:])
        return collect_aborted(indexes, fetch_offset, upper_bound)

    # --- append -------------------------------------------------------------------------

    def append(
        self, records: bytes | bytearray | memoryview, leader_epoch: int, now_ms: int | None = None
    ) -> AppendResult:
        """Leader append: validate, dedupe idempotent retries, assign offsets, write."""
        now = _now_ms() if now_ms is None else now_ms
        config = self._config
        headers = _validate(records)
        if len(records) > config.segment_bytes:
            raise RecordBatchTooLargeError(
                f"{len(records)} bytes exceed segment.bytes {config.segment_bytes}"
            )
        for _, header in headers:
            if header.is_control:
                raise InvalidRecordError("clients may not write control batches")
            if header.size > config.max_message_bytes:
                raise RecordTooLargeError(
                    f"batch of {header.size} bytes exceeds max.message.bytes {config.max_message_bytes}"
                )
        if config.compact_enabled:
            _check_keys(records, headers)
        # The only copy of the payload; offsets and epochs are patched in place.
        buf = bytearray(records)
        append_time = now if config.log_append_time else -1
        first_offset = next_offset = self.log_end_offset
        staged: dict[int, ProducerEntry] = {}
        metas: list[BatchMeta] = []
        txn_starts: list[tuple[int, int]] = []
        for pos, header in headers:
            base = next_offset
            max_ts = header.max_timestamp if append_time < 0 else append_time
            if tracks(header):
                duplicate = self._producers.check(header, base, staged, max_ts, txn_starts)
                if duplicate is not None:
                    if len(headers) > 1:
                        raise DuplicateSequenceError("duplicate batch inside a multi-batch append")
                    return AppendResult(
                        duplicate.first_offset,
                        duplicate.last_offset,
                        duplicate.timestamp if append_time >= 0 else -1,
                        self._log_start,
                        duplicate=True,
                    )
            if header.is_transactional and header.producer_id >= 0:
                txn_starts.append((header.producer_id, base))
            rewrite_base_offset_and_epoch(buf, pos, base, leader_epoch)
            if append_time >= 0:
                set_log_append_time(buf, pos, header.size, now)
            next_offset = base + header.last_offset_delta + 1
            metas.append((pos, next_offset - 1, max_ts, header.size))
        self._write(buf, metas, first_offset, now)
        self._producers.commit(staged)
        for producer_id, base in txn_starts:
            self._producers.txns.begin(producer_id, base)
        if self._epochs.assign(leader_epoch, first_offset):
            self._write_epochs()
        return AppendResult(first_offset, next_offset - 1, append_time, self._log_start)

    def append_as_follower(
        self, records: bytes | bytearray | memoryview, now_ms: int | None = None
    ) -> int:
        """Append batches exactly as the leader stored them; returns the new LEO."""
        # Not strict: batches compacted by the leader's cleaner may be sparse.
        headers = _validate(records, strict=False)
        expected = self.log_end_offset
        metas: list[BatchMeta] = []
        for pos, header in headers:
            if header.base_offset < expected:
                raise UnexpectedAppendOffsetError(
                    f"batch at offset {header.base_offset} but the log end is {expected}"
                )
            expected = header.last_offset + 1
            metas.append((pos, header.last_offset, header.max_timestamp, header.size))
        self._write(
            records, metas, headers[0][1].base_offset, _now_ms() if now_ms is None else now_ms
        )
        changed = False
        active = self._segments[-1]
        for pos, header in headers:
            if is_marker(header):
                self._producers.apply_marker(
                    header, records[pos : pos + header.size], active.txn_index
                )
            else:
                self._producers.update(header)
            changed |= self._epochs.assign(header.partition_leader_epoch, header.base_offset)
        if changed:
            self._write_epochs()
        return self.log_end_offset

    def append_marker(
        self,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
        leader_epoch: int,
        now_ms: int | None = None,
    ) -> int:
        """Leader: end the producer's transaction here with a COMMIT or ABORT control
        batch; returns its offset. A marker older than the producer's epoch raises
        InvalidProducerEpochError; one for a producer with no transaction on here is
        written all the same and ends nothing (as in Kafka)."""
        now = _now_ms() if now_ms is None else now_ms
        self._producers.check_marker_epoch(producer_id, producer_epoch)
        offset = self.log_end_offset
        batch = build_marker(
            producer_id,
            producer_epoch,
            commit,
            coordinator_epoch,
            base_offset=offset,
            leader_epoch=leader_epoch,
            timestamp_ms=now,
        )
        # Stored as a follower stores it, so both build the same state from it.
        self.append_as_follower(batch, now)
        return offset

    def _write(
        self, data: bytes | bytearray | memoryview, metas: list[BatchMeta], first: int, now: int
    ) -> None:
        active = self._segments[-1]
        if self._should_roll(active, len(data), metas[-1][1], now):
            active = self._roll(first)
        active.append(data, metas, now)

    def _should_roll(self, active: LogSegment, size: int, last_offset: int, now: int) -> bool:
        if active.is_empty:
            return False
        basis = active.rolling_basis_ms
        return (
            active.size + size > self._config.segment_bytes
            or active.is_full(last_offset)
            or (basis is not None and now - basis >= self._config.segment_ms)
        )

    def _roll(self, base_offset: int | None = None) -> LogSegment:
        active = self._segments[-1]
        if active.is_empty:
            return active
        active.on_roll()
        self._unflushed.append(active)
        base = self.log_end_offset if base_offset is None else max(base_offset, self.log_end_offset)
        segment = LogSegment(self.directory, base, self._config)
        segment.create()
        self._segments.append(segment)
        # Producer state as of the new segment's base, so restarts replay at most one segment.
        self._producers.take_snapshot(base)
        return segment

    def maybe_roll(self, now_ms: int) -> None:
        active = self._segments[-1]
        basis = active.rolling_basis_ms
        if not active.is_empty and basis is not None and now_ms - basis >= self._config.segment_ms:
            self._roll()

    def roll(self) -> None:
        """Start a new segment now (no-op when the active one is empty)."""
        self._roll()

    # --- reads --------------------------------------------------------------------------

    def read(
        self, offset: int, max_bytes: int, upper_bound: int, *, min_one_batch: bool = True
    ) -> bytes | memoryview:
        """Raw whole batches from the one containing `offset`, each ending before upper_bound.

        At most max_bytes, except that with min_one_batch an oversized first batch is
        returned whole (KIP-74). One pread per segment touched, plus a header scan
        from the sparse index entry to locate the first batch.
        """
        leo = self.log_end_offset
        if offset < self._log_start or offset > leo:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self._log_start}, {leo}] in {self.directory.name}"
            )
        upper = min(upper_bound, leo)
        if offset >= upper:
            return b""
        segments = self._segments
        i = max(0, bisect_right(segments, offset, key=_base) - 1)
        found = None
        while i < len(segments):
            found = segments[i].find_batch(offset)
            if found is not None:
                break
            i += 1
        if found is None:
            return b""
        segment = segments[i]
        pos, header = found
        if header.last_offset >= upper:
            return b""
        if header.size > max_bytes:
            return segment.read(pos, header.size) if min_one_batch else b""
        budget = max_bytes
        chunks: list[bytes | memoryview] = []
        while True:
            data = segment.read(pos, min(budget, segment.size - pos))
            cut, _ = whole_batches(data, upper)
            if cut:
                # A view, not a slice: fetch responses carry megabytes and the
                # connection writes these bytes without another copy.
                chunks.append(data if cut == len(data) else memoryview(data)[:cut])
                budget -= cut
            # Carry on into the next segment only if this one was consumed to its end.
            if cut < len(data) or pos + cut < segment.size or budget < HEADER_SIZE:
                break
            i += 1
            if i >= len(segments):
                break
            segment, pos = segments[i], 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def batches(
        self, start_offset: int = 0, upper_bound: int | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """(base offset, raw batch) for every batch ending at or after start_offset.

        For internal consumers (group coordinator loading, compaction); not a hot path.
        """
        start = max(start_offset, self._log_start)
        end = self.log_end_offset if upper_bound is None else upper_bound
        segments = list(self._segments)
        i = max(0, bisect_right(segments, start, key=_base) - 1)
        for j in range(i, len(segments)):
            segment = segments[j]
            position = 0
            if j == i:
                found = segment.find_batch(start)
                if found is None:
                    continue
                position = found[0]
            for header, raw in segment.iter_raw(position):
                if header.last_offset >= end:
                    return
                if header.last_offset >= start:
                    yield header.base_offset, raw

    def offset_for_timestamp(
        self, timestamp_ms: int, upper_bound: int | None = None
    ) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record whose timestamp is >= timestamp_ms.

        What Kafka's ListOffsets answers: the time index finds the first batch whose
        max timestamp reaches the target, and only that batch is decoded (decompressed
        if need be) to pick its first record, in offset order, at or after the target
        and at or after the log start. Should none of its records qualify (a client's
        max timestamp that its records don't bear out), the search carries on with the
        next such batch. LogAppendTime records all carry their batch's max timestamp.
        None if there is no such record, or, with upper_bound, none before it.
        """
        log_start = self._log_start
        for segment in self._segments:
            if segment.max_timestamp < timestamp_ms or segment.next_offset <= log_start:
                continue
            for position, header in segment.batches_by_timestamp(timestamp_ms, log_start):
                if upper_bound is not None and max(header.base_offset, log_start) >= upper_bound:
                    return None
                found = self._first_record_at(segment, position, header, timestamp_ms)
                if found is not None:
                    if upper_bound is not None and found[0] >= upper_bound:
                        return None
                    return found
        return None

    def _first_record_at(
        self, segment: LogSegment, position: int, header: BatchHeader, timestamp_ms: int
    ) -> tuple[int, int] | None:
        """(offset, timestamp) of the batch's first record at or after the target and log start."""
        records = batch_records(segment, position, header)
        if records is None:
            return max(header.base_offset, self._log_start), header.max_timestamp
        for record in records:
            if record.timestamp >= timestamp_ms and record.offset >= self._log_start:
                return record.offset, record.timestamp
        return None

    def max_timestamp_and_offset(self, upper_bound: int | None = None) -> TimestampAndOffset | None:
        """(offset, timestamp) of the first record with the largest timestamp (KIP-734);
        None if there is none, or none below upper_bound. See kops.broker.log.max_timestamp."""
        return max_timestamp_record(self._segments, self._log_start, upper_bound)

    # --- leader epochs ------------------------------------------------------------------

    def latest_epoch(self) -> int | None:
        return self._epochs.latest_epoch()

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """(largest epoch <= `epoch`, start of the next epoch or the LEO); (-1, -1) if unknown."""
        return self._epochs.end_offset_for(epoch, self.log_end_offset)

    def epoch_entries(self) -> list[tuple[int, int]]:
        return list(self._epochs.entries)

    def _write_epochs(self) -> None:
        self._epochs.write()
        self._epochs_synced = False

    # --- truncation and deletion ----------------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Drop every batch holding an offset >= `offset` (follower truncation)."""
        if offset >= self.log_end_offset:
            return
        if offset < self._segments[0].base_offset:
            self.truncate_fully_and_start_at(offset)
            return
        while len(self._segments) > 1 and self._segments[-1].base_offset >= offset:
            self._drop_segment(self._segments.pop())
        self._segments[-1].truncate_to(offset)
        leo = self.log_end_offset
        if self._epochs.truncate_from_end(leo):
            self._write_epochs()
        self._rebuild_producer_state()
        self._truncate_cleaner_state(leo)
        if self._log_start > leo:
            self._log_start = leo
            self._notify_log_start()
        self._hw = min(self._hw, leo)
        self.recovery_point = min(self.recovery_point, leo)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete everything and restart the log empty at `offset` (log start = LEO = offset)."""
        self._replace_segments(offset)
        self._log_start = self._hw = self.recovery_point = offset
        self._epochs.clear()
        self._write_epochs()
        self._producers.clear()
        self._producers.delete_snapshots(self._producers.snapshot_offsets())
        self._reset_cleaner_state(offset)
        self._notify_log_start()

    def _replace_segments(self, offset: int) -> None:
        for segment in self._segments:
            self._drop_segment(segment)
        segment = LogSegment(self.directory, offset, self._config)
        segment.create()
        self._segments = [segment]

    def _drop_segment(self, segment: LogSegment) -> None:
        segment.delete()
        if segment in self._unflushed:
            self._unflushed.remove(segment)

    def delete_records_before(self, offset: int) -> int:
        """DeleteRecords: move the log start up to `offset` (-1 means the high watermark)."""
        if offset == -1:
            offset = self._hw
        if offset < 0 or offset > self._hw:
            raise OffsetOutOfRangeError(
                f"cannot delete records before {offset}: high watermark is {self._hw}"
            )
        if offset <= self._log_start:
            return self._log_start
        self._log_start = offset
        if offset >= self.log_end_offset:
            self._roll()  # so the old active segment can go too
        n = 0
        while n < len(self._segments) - 1 and self._segments[n + 1].base_offset <= offset:
            n += 1
        self._delete_prefix(n)
        if self._epochs.truncate_from_start(self._log_start):
            self._write_epochs()
        self._notify_log_start()
        return self._log_start

    def apply_retention(self, now_ms: int) -> int:
        """Delete closed segments past retention.ms / retention.bytes; returns how many."""
        n = deletable_segments(self._segments, self._config, now_ms, self._hw)
        if n:
            self._delete_prefix(n)
            self._notify_log_start()
        return n

    def _delete_prefix(self, n: int) -> None:
        if n <= 0:
            return
        for segment in self._segments[:n]:
            log.info("deleting segment %s", segment.log_path)
            self._drop_segment(segment)
        del self._segments[:n]
        first_base = self._segments[0].base_offset
        self._log_start = max(self._log_start, first_base)
        if self._epochs.truncate_from_start(self._log_start):
            self._write_epochs()
        self._producers.delete_snapshots_before(first_base)

    def _notify_log_start(self) -> None:
        if self.on_log_start_offset_change is not None:
            self.on_log_start_offset_change(self)

    # --- compaction -----------------------------------------------------------------------

    @property
    def cleaner_state(self) -> CleanerState:
        if self._cleaner_state is None:
            self._cleaner_state = CleanerState.load(self.directory)
        return self._cleaner_state

    def compact(self, now_ms: int | None = None, *, force: bool = False) -> CleanStats:
        """One compaction pass in this thread, if the log is due one (or `force`).

        Raises what the pass raised; the log is unchanged then.
        """
        job = self.begin_compaction(_now_ms() if now_ms is None else now_ms, force=force)
        if job is None:
            return CleanStats()
        job.run()
        stats = self.finish_compaction(job)
        if job.error is not None:
            raise job.error
        return stats

    def begin_compaction(
        self, now_ms: int, *, force: bool = False, max_map_keys: int = DEFAULT_MAX_MAP_KEYS
    ) -> CleanJob | None:
        """Plan a pass over the closed segments below the high watermark (event loop).

        None when the topic isn't compacted, a pass is already running, nothing is
        cleanable, or (unless `force`) the dirty ratio is below
        min.cleanable.dirty.ratio and no kept tombstone has become removable.
        """
        if self._closed or self._cleaning is not None or not self._config.compact_enabled:
            return None
        segments = self._segments
        n = closed_below(segments, self.last_stable_offset)  # decided transactions only
        if n == 0:
            return None
        state = self.cleaner_state
        total = dirty = 0
        for segment in segments[:n]:
            total += segment.size
            if segment.next_offset > state.dirty_offset:
                dirty += segment.size
        due = state.tombstone_due_ms is not None and state.tombstone_due_ms <= now_ms
        ratio = dirty / total if total else 0.0
        if total == 0 or not (
            force or due or (dirty > 0 and ratio >= self._config.min_cleanable_dirty_ratio)
        ):
            return None
        members = [Member.of(s, segments[i + 1].base_offset) for i, s in enumerate(segments[:n])]
        job = CleanJob(
            self.directory,
            members,
            state.copy(),
            self._config,
            now_ms,
            txns=TxnCleaning.plan(segments, n, self._producers.producers),
            max_map_keys=max_map_keys,
        )
        self._cleaning = job
        return job

    def finish_compaction(self, job: CleanJob) -> CleanStats:
        """Swap in what `job.run()` wrote (event loop); discards it if the log changed meanwhile."""
        if job is not self._cleaning:
            return CleanStats()  # cancelled meanwhile (close, full truncation)
        self._cleaning = None
        if self._closed or not job.finished or job.error is not None or job.new_state is None:
            job.discard()
            return CleanStats()
        try:
            segments = commit(job, self._segments, self._config)
        except Exception:
            log.exception("compaction swap failed in %s; reloading its segments", self.directory)
            self._reload_segments()
            raise
        if segments is None:
            log.info("segments of %s changed while cleaning; pass discarded", self.directory)
            job.discard()
            return CleanStats()
        kept = {id(segment) for segment in segments}
        self._unflushed = [s for s in self._unflushed if id(s) in kept]
        self._segments = segments
        if any(segment.reindexed for segment in segments):
            self._rebuild_producer_state()  # refills a txnindex a fallback rebuild cleared
        job.new_state.save(self.directory)
        self._cleaner_state = job.new_state
        return job.stats

    def _cancel_compaction(self) -> None:
        if self._cleaning is not None:
            self._cleaning.cancel()
            self._cleaning = None

    def _reload_segments(self) -> None:
        """Re-read the segment list from disk after a swap failed part-way (not a crash)."""
        for segment in self._segments:
            segment.close_handles()
        finish_interrupted_swaps(self.directory)
        self._segments = load_segments(self.directory, self._config, recover=False).segments
        self._unflushed = list(self._segments[:-1])
        self._rebuild_producer_state()

    def _rebuild_producer_state(self) -> None:
        """Producer and transaction state from the latest usable snapshot and a replay
        that reaches back to the first segment whose txnindex was cleared."""
        cleared = [s.base_offset for s in self._segments if s.reindexed]
        rebuild_producer_state(
            self._producers, self._segments, self.log_end_offset, min(cleared, default=None)
        )

    def _truncate_cleaner_state(self, offset: int) -> None:
        if (self.directory / STATE_FILE).exists() and self.cleaner_state.truncate(offset):
            self.cleaner_state.save(self.directory)

    def _reset_cleaner_state(self, offset: int) -> None:
        if self._cleaning is not None:
            self._cleaning.cancel()
            self._cleaning = None
        if (self.directory / STATE_FILE).exists() or self._cleaner_state is not None:
            self._cleaner_state = CleanerState(dirty_offset=offset)
            self._cleaner_state.save(self.directory)

    # --- durability ---------------------------------------------------------------------

    def flush(self, *, active: bool = True) -> None:
        """fsync everything written so far and advance the recovery point to the LEO; with
        active=False only the rolled segments (Kafka's flush after a roll), up to the active base."""
        rolled = bool(self._unflushed)
        for segment in self._unflushed:
            segment.flush()
            segment.close_handles()
        self._unflushed.clear()
        if active:
            self._segments[-1].flush()
        if active or rolled:  # new and deleted segment files are durable once the dir is synced
            fsync_dir(self.directory)
        if not self._epochs_synced:
            self._epochs.write(fsync=True)
            self._epochs_synced = True
        synced = self.log_end_offset if active else self._segments[-1].base_offset
        self.recovery_point = max(self.recovery_point, synced)

    def close(self) -> None:
        """Flush, snapshot producer state at the LEO and release file handles."""
        if self._closed:
            return
        self._cancel_compaction()
        active = self._segments[-1]
        active.on_roll()  # final time-index entry; see LogSegment.on_roll
        self.flush()
        leo = self.log_end_offset
        self._producers.take_snapshot(leo, fsync=True)
        # Keep snapshots at segment bases (truncation targets) and the newest one.
        keep = {segment.base_offset for segment in self._segments} | {leo}
        self._producers.delete_snapshots(
            o for o in self._producers.snapshot_offsets() if o not in keep
        )
        for segment in self._segments:
            segment.close_handles()
        self._closed = True

    def close_handles(self) -> None:
        """Release file descriptors without a final snapshot (used before deleting the directory)."""
        self._cancel_compaction()
        for segment in self._segments:
            segment.close_handles()
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"PartitionLog({self.directory.name}, start={self._log_start}, "
            f"hw={self._hw}, leo={self.log_end_offset}, segments={len(self._segments)})"
        )
