"""Per-partition log configuration, append results and storage errors."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from kops.errors import ApiError

__all__ = [
    "AppendResult",
    "CorruptRecordError",
    "DuplicateSequenceError",
    "InvalidProducerEpochError",
    "InvalidRecordError",
    "InvalidTxnStateError",
    "KafkaStorageError",
    "LogConfig",
    "LogError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "RecordBatchTooLargeError",
    "RecordTooLargeError",
    "StorageError",
    "UnexpectedAppendOffsetError",
    "UnsupportedForMessageFormatError",
]

_DAY_MS = 24 * 3600 * 1000

# compression.type names -> batch attribute codec ids (kops.protocol.batch).
_CODECS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# The topic's compression.*.level settings by codec id.
_LEVEL_ATTRS = {
    1: "compression_gzip_level",
    3: "compression_lz4_level",
    4: "compression_zstd_level",
}
# One entry of each index: Kafka accepts segment.index.bytes down to 4 (and then
# rolls on every batch); kops's indexes need room for one entry to do the same.
_MIN_INDEX_BYTES = 12


@dataclass
class LogConfig:
    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * _DAY_MS
    index_interval_bytes: int = 4096
    retention_ms: int = 7 * _DAY_MS  # -1 = unlimited
    retention_bytes: int = -1  # -1 = unlimited
    cleanup_policy: str = "delete"
    message_timestamp_type: str = "CreateTime"
    segment_index_bytes: int = 10 * 1024 * 1024
    max_message_bytes: int = 1048588
    # Compaction (cleanup.policy=compact); see kops.broker.log.cleaner.
    delete_retention_ms: int = _DAY_MS
    min_cleanable_dirty_ratio: float = 0.5
    # "producer": batches are stored as produced; a codec name makes the
    # partition re-compress batches sent with another codec.
    compression_type: str = "producer"
    compression_gzip_level: int = -1
    compression_lz4_level: int = 9
    compression_zstd_level: int = 3

    # Kafka config name -> (attribute, parser)
    _KEYS = {
        "segment.bytes": ("segment_bytes", int),
        "segment.ms": ("segment_ms", int),
        "index.interval.bytes": ("index_interval_bytes", int),
        "retention.ms": ("retention_ms", int),
        "retention.bytes": ("retention_bytes", int),
        "cleanup.policy": ("cleanup_policy", str),
        "message.timestamp.type": ("message_timestamp_type", str),
        "segment.index.bytes": ("segment_index_bytes", int),
        "max.message.bytes": ("max_message_bytes", int),
        "delete.retention.ms": ("delete_retention_ms", int),
        "min.cleanable.dirty.ratio": ("min_cleanable_dirty_ratio", float),
        "compression.type": ("compression_type", str),
        "compression.gzip.level": ("compression_gzip_level", int),
        "compression.lz4.level": ("compression_lz4_level", int),
        "compression.zstd.level": ("compression_zstd_level", int),
    }

    @classmethod
    def from_topic_config(cls, cfg: Mapping[str, str | None]) -> LogConfig:
        """Build from Kafka topic config names; unknown keys are ignored, bad values raise ValueError."""
        kwargs: dict[str, object] = {}
        for key, (attr, parse) in cls._KEYS.items():
            raw = cfg.get(key)
            if raw is None:
                continue
            try:
                kwargs[attr] = parse(raw.strip() if isinstance(raw, str) else raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"invalid value {raw!r} for {key}") from exc
        index_bytes = kwargs.get("segment_index_bytes")
        if isinstance(index_bytes, int) and 4 <= index_bytes < _MIN_INDEX_BYTES:
            kwargs["segment_index_bytes"] = _MIN_INDEX_BYTES
        config = cls(**kwargs)  # type: ignore[arg-type]
        config.validate()
        return config

    def validate(self) -> None:
        if self.segment_bytes < 14:
            raise ValueError("segment.bytes must be at least 14")
        if self.segment_ms < 1:
            raise ValueError("segment.ms must be positive")
        if self.index_interval_bytes < 0:
            raise ValueError("index.interval.bytes must be >= 0")
        if self.segment_index_bytes < 12:
            raise ValueError("segment.index.bytes must be at least 12")
        if self.message_timestamp_type not in ("CreateTime", "LogAppendTime"):
            raise ValueError("message.timestamp.type must be CreateTime or LogAppendTime")
        if self.delete_retention_ms < 0:
            raise ValueError("delete.retention.ms must be >= 0")
        if not 0.0 <= self.min_cleanable_dirty_ratio <= 1.0:
            raise ValueError("min.cleanable.dirty.ratio must be between 0 and 1")
        if self.compression_type != "producer" and self.compression_type not in _CODECS:
            raise ValueError(f"unknown compression.type {self.compression_type!r}")
        policies = {p.strip() for p in self.cleanup_policy.split(",")}
        if not policies or not policies <= {"delete", "compact"}:
            raise ValueError("cleanup.policy must be delete and/or compact")

    @property
    def target_codec(self) -> int | None:
        """The codec id batches are stored in, or None to keep the producer's."""
        return _CODECS.get(self.compression_type)

    @property
    def compression_level(self) -> int | None:
        """The topic's level for its target codec (None: the codec has no level)."""
        attr = _LEVEL_ATTRS.get(self.target_codec or 0)
        return None if attr is None else int(getattr(self, attr))

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == "LogAppendTime"

    @property
    def delete_enabled(self) -> bool:
        return "delete" in {p.strip() for p in self.cleanup_policy.split(",")}

    @property
    def compact_enabled(self) -> bool:
        # Checked on every append; validate() allows only "delete" and "compact" words.
        return "compact" in self.cleanup_policy


@dataclass(slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_time_ms: int  # -1 for CreateTime topics
    log_start_offset: int
    duplicate: bool = (
        False  # an idempotent retry: nothing was written, offsets are the original ones
    )


class StorageError(enum.Enum):
    """Why storage refused an operation, with the Kafka error code the partition answers."""

    UNKNOWN = ("unknown", ErrorCode.unknown_server_error)
    OFFSET_OUT_OF_RANGE = ("offset out of range", ErrorCode.offset_out_of_range)
    CORRUPT_RECORD = ("corrupt record", ErrorCode.corrupt_message)
    RECORD_TOO_LARGE = ("record too large", ErrorCode.message_too_large)
    RECORD_BATCH_TOO_LARGE = ("record batch too large", ErrorCode.record_list_too_large)
    UNSUPPORTED_FOR_MESSAGE_FORMAT = (
        "unsupported for message format",
        ErrorCode.unsupported_for_message_format,
    )
    OUT_OF_ORDER_SEQUENCE = ("out of order sequence", ErrorCode.out_of_order_sequence_number)
    DUPLICATE_SEQUENCE = ("duplicate sequence", ErrorCode.duplicate_sequence_number)
    INVALID_PRODUCER_EPOCH = ("invalid producer epoch", ErrorCode.invalid_producer_epoch)
    INVALID_TXN_STATE = ("invalid transaction state", ErrorCode.invalid_txn_state)
    STORAGE_FAILURE = ("storage failure", ErrorCode.kafka_storage_error)
    INVALID_RECORD = ("invalid record", ErrorCode.invalid_record)
    # A follower append that goes backwards; the replica fetcher must truncate first.
    UNEXPECTED_APPEND_OFFSET = ("unexpected append offset", ErrorCode.unknown_server_error)

    def __init__(self, label: str, error_code: ErrorCode) -> None:
        self.label = label
        self.error_code = error_code


class LogError(ApiError):
    """A storage failure; `kind` names it and carries the Kafka error code to answer."""

    kind: StorageError = StorageError.UNKNOWN

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.error_code = cls.kind.error_code

    def __init__(self, message: str = "", kind: StorageError | None = None) -> None:
        if kind is not None:
            self.kind = kind
        super().__init__(message, error_code=self.kind.error_code)


class OffsetOutOfRangeError(LogError):
    kind = StorageError.OFFSET_OUT_OF_RANGE


class CorruptRecordError(LogError):
    kind = StorageError.CORRUPT_RECORD


class RecordTooLargeError(LogError):
    kind = StorageError.RECORD_TOO_LARGE


class RecordBatchTooLargeError(LogError):
    kind = StorageError.RECORD_BATCH_TOO_LARGE


class UnsupportedForMessageFormatError(LogError):
    kind = StorageError.UNSUPPORTED_FOR_MESSAGE_FORMAT


class OutOfOrderSequenceError(LogError):
    kind = StorageError.OUT_OF_ORDER_SEQUENCE


class DuplicateSequenceError(LogError):
    kind = StorageError.DUPLICATE_SEQUENCE


class InvalidProducerEpochError(LogError):
    kind = StorageError.INVALID_PRODUCER_EPOCH


class InvalidTxnStateError(LogError):
    """A producer's non-transactional batch while its transaction is on in the partition."""

    kind = StorageError.INVALID_TXN_STATE


class KafkaStorageError(LogError):
    kind = StorageError.STORAGE_FAILURE


class InvalidRecordError(LogError):
    """Records refused as invalid; `record_errors` names them (KIP-467) so a
    client fails only those: (index of the record in the request, reason)."""

    kind = StorageError.INVALID_RECORD

    def __init__(
        self, message: str = "", record_errors: list[tuple[int, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.record_errors = record_errors or []


class UnexpectedAppendOffsetError(LogError):
    """A follower append whose offsets go backwards; the replica fetcher must truncate first."""

    kind = StorageError.UNEXPECTED_APPEND_OFFSET
