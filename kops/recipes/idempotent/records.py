"""One view of a consumed record, whichever Kafka client produced it, and its identity.

confluent-kafka's ``Message`` exposes methods (``msg.topic()``); kafka-python's and aiokafka's
``ConsumerRecord`` expose attributes (``rec.topic``). :func:`as_record` turns any of them into a
:class:`Record` so the recipes are written once. Records you build yourself (tests, replays)
can be a :class:`Record` directly.

:func:`message_id` decides what "the same message" means for deduplication:

1. the ``kops.message.id`` header, stamped by the kops delay, DLQ and fan-out recipes and kept
   on every copy, so a retried or re-forwarded copy is recognised;
2. else the caller's key function (e.g. an order id parsed from the value);
3. else ``topic/partition/offset``, which catches redelivery of the very same record (after a
   crash or a rebalance) but not a copy produced twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kops.recipes import headers as kops_headers

__all__ = ["KeyFunction", "Record", "as_record", "message_id"]


@dataclass(frozen=True)
class Record:
    """The fields of a consumed record the recipes need, client-independent."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=tuple)
    #: Epoch milliseconds, or None when the client did not say.
    timestamp: int | None = None
    #: The client's own object, for handlers that want it back.
    raw: Any = field(default=None, compare=False, repr=False)


KeyFunction = Callable[[Record], "str | bytes | None"]


def as_record(obj: Any) -> Record:
    """A :class:`Record` from a confluent-kafka ``Message``, a kafka-python or aiokafka
    ``ConsumerRecord``, or a :class:`Record` (returned unchanged)."""
    if isinstance(obj, Record):
        return obj
    topic = getattr(obj, "topic", None)
    if callable(topic):  # confluent-kafka: accessors are methods
        ts_type, ts = obj.timestamp()
        return Record(
            topic=obj.topic(),
            partition=obj.partition(),
            offset=obj.offset(),
            key=obj.key(),
            value=obj.value(),
            headers=tuple(obj.headers() or ()),
            # TIMESTAMP_NOT_AVAILABLE is 0; the timestamp is meaningless then.
            timestamp=ts if ts_type else None,
            raw=obj,
        )
    if topic is None or not hasattr(obj, "offset"):
        raise TypeError(f"not a Kafka record: {type(obj).__name__}")
    ts = getattr(obj, "timestamp", None)
    return Record(
        topic=topic,
        partition=obj.partition,
        offset=obj.offset,
        key=_as_bytes(getattr(obj, "key", None)),
        value=_as_bytes(getattr(obj, "value", None)),
        headers=tuple(getattr(obj, "headers", None) or ()),
        timestamp=ts if isinstance(ts, int) and ts >= 0 else None,
        raw=obj,
    )


def message_id(record: Any, key: KeyFunction | None = None) -> str:
    """The identity used for deduplication (see the module docstring for the order)."""
    rec = as_record(record)
    found = kops_headers.get(rec.headers, kops_headers.MESSAGE_ID)
    if found:
        return f"id:{found}"
    if key is not None:
        custom = key(rec)
        if custom is not None:
            text = (
                custom.decode("utf-8", "backslashreplace")
                if isinstance(custom, bytes)
                else str(custom)
            )
            return f"key:{text}"
    return f"pos:{rec.topic}/{rec.partition}/{rec.offset}"


def _as_bytes(value: Any) -> bytes | None:
    # kafka-python and aiokafka hand back deserialized values when a deserializer is set.
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode()
