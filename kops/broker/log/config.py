"""Per-partition log configuration, append results and storage errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AppendResult",
    "CorruptRecordError",
    "DuplicateSequenceError",
    "InvalidProducerEpochError",
    "InvalidRecordError",
    "KafkaStorageError",
    "LogConfig",
    "LogError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "RecordBatchTooLargeError",
    "RecordTooLargeError",
    "UnexpectedAppendOffsetError",
    "UnsupportedForMessageFormatError",
]

_DAY_MS = 24 * 3600 * 1000


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
        policies = {p.strip() for p in self.cleanup_policy.split(",")}
        if not policies or not policies <= {"delete", "compact"}:
            raise ValueError("cleanup.policy must be delete and/or compact")

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


class LogError(Exception):
    """A storage failure that maps to a Kafka error code for the partition response."""

    error_code: int = -1  # UNKNOWN_SERVER_ERROR

    def __init__(self, message: str = "", error_code: int | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


class OffsetOutOfRangeError(LogError):
    error_code = 1


class CorruptRecordError(LogError):
    error_code = 2


class RecordTooLargeError(LogError):
    error_code = 10  # MESSAGE_TOO_LARGE


class RecordBatchTooLargeError(LogError):
    error_code = 18  # RECORD_LIST_TOO_LARGE


class UnsupportedForMessageFormatError(LogError):
    error_code = 43


class OutOfOrderSequenceError(LogError):
    error_code = 45


class DuplicateSequenceError(LogError):
    error_code = 46


class InvalidProducerEpochError(LogError):
    error_code = 47


class KafkaStorageError(LogError):
    error_code = 56


class InvalidRecordError(LogError):
    error_code = 87


class UnexpectedAppendOffsetError(LogError):
    """A follower append whose offsets go backwards; the replica fetcher must truncate first."""
