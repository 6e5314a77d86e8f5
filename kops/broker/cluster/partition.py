"""One partition replica as the broker sees it, and the only door handlers
have to its storage.

Handlers never touch the log: they append with the acks a request asks for,
read up to the high watermark, look up offsets and epochs through this class,
and get Kafka error codes back instead of storage exceptions. The storage
error -> ErrorCode mapping happens here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

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
from kops.broker.purgatory import Purgatory
from kops.protocol.batch import InvalidBatchError
from kops.protocol.recompress import recompress_batches

TopicPartition = tuple[str, int]

__all__ = ["AppendOutcome", "Partition", "ReadOutcome", "TopicPartition"]

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
    # KIP-467: (index of the record in the request, reason) of the records at fault.
    record_errors: tuple[tuple[int, str], ...] = ()


@dataclass(slots=True)
class ReadOutcome:
    error: ErrorCode
    records: bytes | memoryview = b""


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
        epoch = log.latest_epoch()
        self.leader_epoch = epoch if epoch is not None else 0
        # Traffic counters for the broker's metrics (kops.broker.metrics reads them
        # when scraped): plain integers, so producing and fetching pay one addition.
        self.messages_in = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.index}, epoch={self.leader_epoch})"

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
    def size_bytes(self) -> int:
        return self._log.size_bytes

    # ---- configs ------------------------------------------------------------
    @property
    def max_message_bytes(self) -> int:
        return self._log.config.max_message_bytes

    def update_config(self, config: LogConfig, min_insync_replicas: int) -> None:
        self._log.update_config(config)
        self.min_insync_replicas = min_insync_replicas

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
        if acks == -1 and len(self.isr) < self.min_insync_replicas:
            return AppendOutcome(ErrorCode.not_enough_replicas)
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
            ErrorCode.none, result.base_offset, result.log_append_time_ms, result.log_start_offset
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
        # Single replica: an append is committed once it is in the local log.
        if len(self.isr) <= 1:
            self._log.high_watermark = self._log.log_end_offset
        self._fetches.check_and_complete(self._key)
        return result

    # ---- consume ------------------------------------------------------------
    def check_leader_epoch(self, current_leader_epoch: int) -> ErrorCode:
        """KIP-320: a client naming an older epoch is fenced, a newer one is ahead of us."""
        if current_leader_epoch < 0 or current_leader_epoch == self.leader_epoch:
            return ErrorCode.none
        if current_leader_epoch < self.leader_epoch:
            return ErrorCode.fenced_leader_epoch
        return ErrorCode.unknown_leader_epoch

    def read(self, offset: int, max_bytes: int, *, min_one_batch: bool) -> ReadOutcome:
        """Whole batches from `offset`, at most max_bytes (but one batch when
        min_one_batch), never beyond the high watermark."""
        try:
            records = self._log.read(
                offset, max_bytes, self._log.high_watermark, min_one_batch=min_one_batch
            )
        except OffsetOutOfRangeError as exc:
            # Other storage failures stay exceptions: the connection closes, as
            # for any internal error.
            return ReadOutcome(exc.error_code)
        return ReadOutcome(ErrorCode.none, records)

    def batches(self) -> Iterator[tuple[int, bytes]]:
        """(base offset, raw batch) of every batch from the log start (the broker's own readers)."""
        return self._log.batches(self._log.log_start_offset)

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after `timestamp`, below the high watermark."""
        return self._log.offset_for_timestamp(timestamp, self._log.high_watermark)

    def max_timestamp(self) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with the largest timestamp (KIP-734),
        or None: an empty log, or that record is not below the high watermark yet."""
        return self._log.max_timestamp_and_offset(self._log.high_watermark)

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
