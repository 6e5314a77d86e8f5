"""Kafka-style partition storage: segments, indexes, recovery, retention.

Storage knows nothing of sockets or request structs; it deals in raw record
batches (see kops.protocol.batch) and offsets.
"""

from kops.broker.log.cleaner import CleanStats
from kops.broker.log.config import (
    AppendResult,
    CorruptRecordError,
    DuplicateSequenceError,
    InvalidProducerEpochError,
    InvalidRecordError,
    InvalidTxnStateError,
    KafkaStorageError,
    LogConfig,
    LogError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    RecordBatchTooLargeError,
    RecordTooLargeError,
    StorageError,
    UnexpectedAppendOffsetError,
    UnsupportedForMessageFormatError,
)
from kops.broker.log.manager import LogManager
from kops.broker.log.partition_log import PartitionLog

__all__ = [
    "AppendResult",
    "CleanStats",
    "CorruptRecordError",
    "DuplicateSequenceError",
    "InvalidProducerEpochError",
    "InvalidRecordError",
    "InvalidTxnStateError",
    "KafkaStorageError",
    "LogConfig",
    "LogError",
    "LogManager",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "PartitionLog",
    "RecordBatchTooLargeError",
    "RecordTooLargeError",
    "StorageError",
    "UnexpectedAppendOffsetError",
    "UnsupportedForMessageFormatError",
]
