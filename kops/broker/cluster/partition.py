"""One partition replica as the broker sees it, and the only door handlers
have to its storage.

Handlers never touch the log: they append with the acks a request asks for,
read up to the high watermark (read_committed: the last stable offset), look up
offsets and epochs and write transaction markers through this class, and get
Kafka error codes back instead of storage exceptions. The storage
error -> ErrorCode mapping happens here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from kops.broker.cluster.replication import IsrProposal, LeaderReplicas, ReplicationConfig
from kops.broker.log import (
    AppendResult,
    CorruptRecordError,
    InvalidRecordError,
    LogConfig,
    LogError,
    OffsetOutOfRangeError,
    PartitionLog,
    UnsupportedForMessageFormatError,
)
from kops.broker.purgatory import DelayedOperation, Purgatory
from kops.protocol.batch import InvalidBatchError
from kops.protocol.recompress import recompress_batches

TopicPartition = tuple[str, int]

__all__ = [
    "AppendOutcome",
    "FollowerRead",
    "HighWatermarkWait",
    "Partition",
    "ReadOutcome",
    "TopicPartition",
]


def monotonic_ms() -> int:
    """The clock replication runs on: lag windows must not jump with the wall clock."""
    return int(time.monotonic() * 1000)


_BATCH_ERRORS: dict[int, type[LogError]] = {
    CorruptRecordError.error_code: CorruptRecordError,
    UnsupportedForMessageFormatError.error_code: UnsupportedForMessageFormatError,
    InvalidRecordError.error_code: InvalidRecordError,
}


@dataclass(slots=True)
class AppendOutcome:
    """A produce's result for one partition; offsets are -1 unless error is none."""

    error: ErrorCode = ErrorCode.none
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    message: str | None = None
    # The offset acks=all waits for the high watermark to pass; -1 when none must.
    wait_for_offset: int = -1
    # KIP-467: (index of the record in the request, reason) of the records at fault.
    record_errors: tuple[tuple[int, str], ...] = ()


@dataclass(slots=True)
class ReadOutcome:
    error: ErrorCode
    records: bytes | memoryview = b""


@dataclass(slots=True)
class FollowerRead:
    """A follower's Fetch as the leader answers it: records up to the LEO, or where to cut."""

    error: ErrorCode
    records: bytes | memoryview = b""
    diverging_epoch: tuple[int, int] | None = None


class Partition:
    def __init__(
        self,
        topic: str,
        index: int,
        log: PartitionLog,
        *,
        leader: int,
        replicas: list[int],
        isr: list[int],
        fetches: Purgatory[TopicPartition],
        min_insync_replicas: int = 1,
        produces: Purgatory[TopicPartition] | None = None,
        replica_lag_time_max_ms: int = 30000,
    ) -> None:
        self.topic = topic
        self.index = index
        self.leader = leader
        self.replicas = replicas
        self.isr = isr
        self.min_insync_replicas = min_insync_replicas
        self._log = log
        self._key: TopicPartition = (topic, index)
        # Fetches parked for data are woken by appends here (and, with
        # followers, by high-watermark moves).
        self._fetches = fetches
        # acks=all produces parked until the high watermark passes them.
        self._produces = produces
        epoch = log.latest_epoch()
        self.leader_epoch = epoch if epoch is not None else 0
        self.partition_epoch = 0
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        # While this broker leads with followers: what it knows of them (else None).
        self.replication: LeaderReplicas | None = None
        # Where the leader sends the ISR changes it wants (AlterPartition to the controller).
        self.on_isr_change: Callable[[Partition, IsrProposal], None] | None = None
        # Traffic counters for the broker's metrics (kops.broker.metrics reads them
        # when scraped): plain integers, so producing and fetching pay one addition.
        self.messages_in = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.index}, epoch={self.leader_epoch})"

    def set_replica_state(
        self,
        leader: int,
        leader_epoch: int,
        replicas: tuple[int, ...],
        isr: tuple[int, ...],
        *,
        local_id: int,
        partition_epoch: int = 0,
    ) -> None:
        """The partition as the cluster metadata now describes it.

        A new leader epoch led here starts a fresh view of the followers (as in
        Kafka, nothing survives a leader change); the same epoch with a newer
        partition epoch is an ISR change, which the view takes in. Requests
        parked here are re-checked when leadership moved: a fetch or an acks=all
        waiting on this broker must hear that it no longer leads.
        """
        moved = (leader, leader_epoch) != (self.leader, self.leader_epoch)
        self.leader = leader
        self.leader_epoch = leader_epoch
        self.replicas = list(replicas)
        self.isr = list(isr)
        self.partition_epoch = partition_epoch
        now = monotonic_ms()
        if leader != local_id or len(replicas) <= 1:
            self.replication = None
            if leader == local_id:
                self.mark_committed_to_end()
        elif moved or self.replication is None:
            self.replication = LeaderReplicas(
                local_id,
                replicas,
                isr,
                leader_epoch,
                partition_epoch,
                self._log.log_end_offset,
                self._log.high_watermark,
                now,
                self._replication_config(),
            )
        elif self.replication.isr_committed(isr, partition_epoch, now):
            self._high_watermark_moved()
        if moved:
            self.wake()
        self.check_isr(now)

    def _replication_config(self) -> ReplicationConfig:
        return ReplicationConfig(self.replica_lag_time_max_ms, self.min_insync_replicas)

    # ---- replication, the leader's side ---------------------------------------
    def _high_watermark_moved(self) -> None:
        assert self.replication is not None
        self._log.high_watermark = self.replication.high_watermark
        self.wake()

    def check_isr(self, now_ms: int | None = None) -> None:
        """Propose the ISR change that is due, if any (a lagging follower, a caught-up one)."""
        if self.replication is None or self.on_isr_change is None:
            return
        proposal = self.replication.next_isr_change(monotonic_ms() if now_ms is None else now_ms)
        if proposal is not None:
            self.on_isr_change(self, proposal)

    def isr_change_failed(self, proposal: IsrProposal) -> None:
        """The controller refused the proposal (an error answer, not a timeout)."""
        if self.replication is not None and self.replication.isr_rejected(proposal):
            self._high_watermark_moved()

    def read_for_follower(
        self, fetch_offset: int, last_fetched_epoch: int, max_bytes: int
    ) -> FollowerRead:
        """A follower's Fetch: where its log parts from this one (KIP-279), else batches
        up to the log end (not the high watermark: followers fetch what is uncommitted)."""
        if last_fetched_epoch >= 0:
            epoch, end = self._log.end_offset_for_epoch(last_fetched_epoch)
            if epoch < 0:
                # Nothing here as old as the follower's last epoch: start over from our log.
                return FollowerRead(ErrorCode.offset_out_of_range)
            if epoch != last_fetched_epoch or end < fetch_offset:
                return FollowerRead(ErrorCode.none, diverging_epoch=(epoch, end))
        try:
            records = self._log.read(
                fetch_offset, max_bytes, self._log.log_end_offset, min_one_batch=True
            )
        except OffsetOutOfRangeError as exc:
            return FollowerRead(exc.error_code)
        return FollowerRead(ErrorCode.none, records)

    def follower_fetched(self, replica_id: int, fetch_offset: int) -> None:
        """A follower asked from `fetch_offset`: it holds everything below it."""
        replication = self.replication
        if replication is None or replica_id not in replication.replicas:
            return
        if not 0 <= fetch_offset <= self._log.log_end_offset:
            return  # answered OFFSET_OUT_OF_RANGE; it proves nothing about the follower
        now = monotonic_ms()
        if replication.on_follower_fetch(replica_id, fetch_offset, now):
            self._high_watermark_moved()
        self.check_isr(now)

    def acks_all_status(self, wait_for_offset: int, local_id: int) -> ErrorCode | None:
        """A parked acks=all: None while it must wait, else the code to answer with."""
        if self.leader != local_id:
            return ErrorCode.not_leader_or_follower
        if self.replication is None:
            # A lone replica commits at once.
            return ErrorCode.none if self.high_watermark > wait_for_offset else None
        code = self.replication.check_acks_all_done(wait_for_offset)
        return None if code is None else ErrorCode(code)

    # ---- replication, the follower's side -------------------------------------
    def append_as_follower(self, records: bytes | memoryview) -> None:
        """The leader's batches as it stored them (offsets and epochs kept)."""
        self._log.append_as_follower(records)

    def truncate_to(self, offset: int) -> None:
        self._log.truncate_to(offset)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        self._log.truncate_fully_and_start_at(offset)

    def set_follower_high_watermark(self, high_watermark: int) -> None:
        self._log.high_watermark = min(high_watermark, self._log.log_end_offset)

    @property
    def last_epoch(self) -> int:
        epoch = self._log.latest_epoch()
        return -1 if epoch is None else epoch

    # ---- offsets ------------------------------------------------------------
    @property
    def log_start_offset(self) -> int:
        return self._log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._log.log_end_offset

    @property
    def high_watermark(self) -> int:
        return self._log.high_watermark

    @property
    def last_stable_offset(self) -> int:
        """Where read_committed reads end: no undecided transaction starts below it."""
        return self._log.last_stable_offset

    def aborted_transactions(self, fetch_offset: int, upper_bound: int) -> list[tuple[int, int]]:
        """(producer id, first offset) of the aborted transactions overlapping
        [fetch_offset, upper_bound): what a read_committed Fetch of that range lists."""
        return self._log.aborted_transactions(fetch_offset, upper_bound)

    @property
    def size_bytes(self) -> int:
        return self._log.size_bytes

    # ---- configs ------------------------------------------------------------
    @property
    def max_message_bytes(self) -> int:
        return self._log.config.max_message_bytes

    def update_config(self, config: LogConfig, min_insync_replicas: int) -> None:
        self._log.update_config(config)
        self.min_insync_replicas = min_insync_replicas
        if self.replication is not None:
            self.replication.config = self._replication_config()

    # ---- produce ------------------------------------------------------------
    def append(
        self, records: bytes | None, *, acks: int = 1, now_ms: int | None = None
    ) -> AppendOutcome:
        """Append a produce request's batches, checked as Kafka checks them.

        acks is 0, 1 or -1 (all). On a lone replica every append is committed
        at once, so acks=all needs no wait; with followers, an acks=all append
        parks a delayed produce keyed by this partition, completed by the
        high watermark passing its last offset.
        """
        if records is None or not len(records):
            return AppendOutcome(
                ErrorCode.corrupt_message, message="no record batch in the request"
            )
        if len(records) > self._log.config.max_message_bytes:
            return AppendOutcome(ErrorCode.message_too_large)
        if acks == -1:
            if self.replication is not None:
                refused = ErrorCode(self.replication.check_append_acks_all())
            elif len(self.isr) < self.min_insync_replicas:
                refused = ErrorCode.not_enough_replicas
            else:
                refused = ErrorCode.none
            if refused:
                return AppendOutcome(refused)
        try:
            result = self.append_records(records, now_ms)
        except LogError as exc:
            return AppendOutcome(
                exc.error_code,
                message=str(exc),
                log_start_offset=self._log.log_start_offset,
                record_errors=tuple(getattr(exc, "record_errors", ())),
            )
        if not result.duplicate:
            # Offsets are assigned per record: the count without decoding a record.
            self.messages_in += result.last_offset - result.base_offset + 1
            self.bytes_in += len(records)
        return AppendOutcome(
            ErrorCode.none,
            result.base_offset,
            result.log_append_time_ms,
            result.log_start_offset,
            wait_for_offset=result.last_offset if acks == -1 and self.replication else -1,
        )

    def append_records(
        self, records: bytes | bytearray | memoryview, now_ms: int | None = None
    ) -> AppendResult:
        """Append as the leader; raises LogError (a KopsError with its error code)."""
        config = self._log.config
        codec = config.target_codec
        if codec is not None:
            # compression.type names a codec: the only case that looks inside batches.
            try:
                records = recompress_batches(records, codec, config.compression_level)
            except InvalidBatchError as exc:
                raise _BATCH_ERRORS.get(exc.error_code, CorruptRecordError)(exc.message) from exc
        result = self._log.append(records, self.leader_epoch, now_ms)
        self._appended()
        return result

    def write_marker(
        self,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
        now_ms: int | None = None,
    ) -> int:
        """As the leader, end the producer's transaction here with a COMMIT or ABORT
        marker; returns its offset. Raises LogError (InvalidProducerEpochError for an
        epoch older than the producer's). The high watermark moves as for an append
        (at once on a lone replica); `wait_committed` waits until it passes the marker."""
        offset = self._log.append_marker(
            producer_id, producer_epoch, commit, coordinator_epoch, self.leader_epoch, now_ms
        )
        self._appended()
        return offset

    def _appended(self) -> None:
        if self.replication is not None:
            if self.replication.on_append(self._log.log_end_offset, monotonic_ms()):
                self._high_watermark_moved()
        elif len(self.isr) <= 1:
            # Single replica: an append is committed once it is in the local log.
            self._log.high_watermark = self._log.log_end_offset
        self._fetches.check_and_complete(self._key)

    async def wait_committed(self, offset: int, local_id: int, timeout: float) -> ErrorCode:
        """Until the high watermark passes `offset` (a marker, say): NONE, or why not, as
        HighWatermarkWait answers (REQUEST_TIMED_OUT after `timeout` seconds). Parked in
        the broker's produce purgatory; a partition made without one checks once."""
        wait = HighWatermarkWait(self, offset, local_id, timeout)
        if self._produces is None:
            wait.try_complete()
        elif not self._produces.try_complete_else_watch(wait, [self._key]):
            await wait.wait()
        return wait.result

    # ---- consume ------------------------------------------------------------
    def check_leader_epoch(self, current_leader_epoch: int) -> ErrorCode:
        """KIP-320: a client naming an older epoch is fenced, a newer one is ahead of us."""
        if current_leader_epoch < 0 or current_leader_epoch == self.leader_epoch:
            return ErrorCode.none
        if current_leader_epoch < self.leader_epoch:
            return ErrorCode.fenced_leader_epoch
        return ErrorCode.unknown_leader_epoch

    def read(
        self, offset: int, max_bytes: int, *, min_one_batch: bool, read_committed: bool = False
    ) -> ReadOutcome:
        """Whole batches from `offset`, at most max_bytes (but one batch when
        min_one_batch), never beyond the high watermark, or with read_committed the
        last stable offset."""
        upper = self._visible_end(read_committed)
        try:
            records = self._log.read(offset, max_bytes, upper, min_one_batch=min_one_batch)
        except OffsetOutOfRangeError as exc:
            # Other storage failures stay exceptions: the connection closes, as
            # for any internal error.
            return ReadOutcome(exc.error_code)
        return ReadOutcome(ErrorCode.none, records)

    def batches(self) -> Iterator[tuple[int, bytes]]:
        """(base offset, raw batch) of every batch from the log start (the broker's own readers)."""
        return self._log.batches(self._log.log_start_offset)

    def _visible_end(self, read_committed: bool) -> int:
        return self._log.last_stable_offset if read_committed else self._log.high_watermark

    def offset_for_timestamp(
        self, timestamp: int, *, read_committed: bool = False
    ) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after `timestamp`, below the high
        watermark (read_committed: the last stable offset)."""
        return self._log.offset_for_timestamp(timestamp, self._visible_end(read_committed))

    def max_timestamp(self, *, read_committed: bool = False) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with the largest timestamp (KIP-734),
        or None: an empty log, or that record is not below the high watermark (with
        read_committed, the last stable offset) yet."""
        return self._log.max_timestamp_and_offset(self._visible_end(read_committed))

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """The largest epoch not above `epoch` and its end offset (KIP-101/279)."""
        return self._log.end_offset_for_epoch(epoch)

    # ---- admin --------------------------------------------------------------
    def delete_records(self, offset: int) -> tuple[ErrorCode, int]:
        """DeleteRecords: move the log start to `offset` (-1: the high watermark);
        returns the error and the new low watermark."""
        high_watermark = self._log.high_watermark
        target = high_watermark if offset == -1 else offset
        if target < 0 or target > high_watermark:
            return ErrorCode.offset_out_of_range, -1
        return ErrorCode.none, self._log.delete_records_before(target)

    def mark_committed_to_end(self) -> None:
        """A lone replica has every local record committed, including after an
        unclean shutdown (the log was recovered to its last valid batch)."""
        self._log.high_watermark = self._log.log_end_offset

    def wake(self) -> None:
        """Re-check requests parked on this partition (it changed or went away)."""
        self._fetches.check_and_complete(self._key)
        if self._produces is not None:
            self._produces.check_and_complete(self._key)


class HighWatermarkWait(DelayedOperation):
    """Parked until the partition's high watermark passes `offset` (the broker's own writes).

    ``result`` is then NONE, NOT_ENOUGH_REPLICAS_AFTER_APPEND or NOT_LEADER_OR_FOLLOWER
    as for acks=all, or REQUEST_TIMED_OUT once the delay passed.
    """

    def __init__(self, partition: Partition, offset: int, local_id: int, delay: float) -> None:
        super().__init__(delay)
        self._partition = partition
        self._offset = offset
        self._local_id = local_id
        self.result = ErrorCode.request_timed_out

    def try_complete(self) -> bool:
        code = self._partition.acks_all_status(self._offset, self._local_id)
        if code is None:
            return False
        self.result = code
        return self.force_complete()

    def on_complete(self) -> None:
        pass
