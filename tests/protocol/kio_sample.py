"""Build a populated instance of any kio entity, for round trips of versions no client sends.

Every field gets a non-default value of its Kafka type (arrays get two
elements, nullable fields a value, records a real v2 batch), so encode →
decode → encode exercises every field of the version's schema.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
import uuid
from functools import cache
from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.primitive import i32Timedelta, i64Timedelta

from kops.protocol.batch import build_batch

_INTS = {"int8": 7, "int16": 300, "int32": 70_000, "int64": 5_000_000_000, "uint16": 65_000}


@cache
def _batch() -> bytes:
    return build_batch([(b"key", b"value", [("h", b"1")])], timestamp_ms=1_700_000_000_000)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _scalar(kafka_type: str | None, hint: Any, index: int) -> Any:
    if kafka_type in _INTS:
        return hint(_INTS[kafka_type] + index)
    if kafka_type == "bool":
        return True
    if kafka_type == "string":
        return hint(f"s{index}") if hint is not str else f"s{index}"
    if kafka_type == "bytes":
        return bytes([1, 2, 3, index])
    if kafka_type == "records":
        return _batch()
    if kafka_type == "error_code":
        return ErrorCode.unknown_topic_or_partition
    if kafka_type == "timedelta_i32":
        return i32Timedelta.parse(datetime.timedelta(milliseconds=1500 + index))
    if kafka_type == "timedelta_i64":
        return i64Timedelta.parse(datetime.timedelta(milliseconds=86_400_000 + index))
    if kafka_type == "datetime_i64":
        return datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
    if kafka_type == "uuid":
        return uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF + index)
    if kafka_type == "float64":
        return 1.5
    raise NotImplementedError(f"no sample for kafka type {kafka_type!r} ({hint!r})")


def sample(cls: type[Any], index: int = 0) -> Any:
    """A populated instance of the kio entity class `cls`."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = _strip_optional(hints[field.name])
        kafka_type = field.metadata.get("kafka_type")
        if typing.get_origin(hint) is tuple:
            (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
            item = _strip_optional(item)
            if dataclasses.is_dataclass(item):
                values[field.name] = tuple(sample(item, i) for i in range(2))
            else:
                values[field.name] = tuple(_scalar(kafka_type, item, i) for i in range(2))
        elif dataclasses.is_dataclass(hint):
            values[field.name] = sample(hint, index)
        else:
            values[field.name] = _scalar(kafka_type, hint, index)
    return cls(**values)
