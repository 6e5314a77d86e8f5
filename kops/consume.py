"""Read records with confluent-kafka, from a chosen start position, with or without a group.

Without a group, partitions are assigned directly under a throwaway group id with auto-commit
off, so nothing is ever committed. With a group, offsets of records handed to the caller are
committed (at least once: a record is marked done when the caller asks for the next one).

Example::

    from kops.consume import StartAt, consume
    for rec in consume("127.0.0.1:9092", "orders", start=StartAt.beginning(),
                       max_messages=10, idle_timeout=5):
        print(rec.offset, rec.value)
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from kops.client import (
    ClientSettings,
    ErrorWatch,
    IdleClock,
    KopsClientError,
    close_consumer,
    fetch_metadata,
    translate_error,
)

__all__ = [
    "ConsumedRecord",
    "StartAt",
    "consume",
    "decode_bytes",
    "format_timestamp",
]

StartKind = Literal["beginning", "end", "offset", "timestamp", "committed"]


@dataclass(frozen=True)
class StartAt:
    """Where to start reading each partition.

    ``offset(n)``: n >= 0 is an absolute offset; n < 0 means the last ``-n`` records.
    ``timestamp(ms)``: the first record with timestamp >= ms (the end if none).
    ``committed(reset)``: the group's committed offset, else ``reset`` ("earliest"/"latest").
    """

    kind: StartKind
    value: int | str | None = None

    @classmethod
    def beginning(cls) -> StartAt:
        return cls("beginning")

    @classmethod
    def end(cls) -> StartAt:
        return cls("end")

    @classmethod
    def offset(cls, n: int) -> StartAt:
        return cls("offset", n)

    @classmethod
    def timestamp(cls, ms: int) -> StartAt:
        return cls("timestamp", ms)

    @classmethod
    def committed(cls, reset: Literal["earliest", "latest"] = "latest") -> StartAt:
        return cls("committed", reset)


def decode_bytes(data: bytes | None) -> tuple[str | None, str | None]:
    """``(text, encoding)``: UTF-8 text with encoding "utf-8", else base64 with "base64".

    ``None`` stays ``(None, None)``.
    """
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def format_timestamp(ms: int | None) -> str:
    """Epoch ms as ISO-8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.123Z``."""
    if ms is None:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    #: Epoch ms, or None when the broker reports no timestamp.
    timestamp: int | None
    #: "create_time", "log_append_time" or None.
    timestamp_type: str | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @classmethod
    def from_message(cls, msg: Message) -> ConsumedRecord:
        ts_type, ts = msg.timestamp()
        kind = {
            TIMESTAMP_CREATE_TIME: "create_time",
            TIMESTAMP_LOG_APPEND_TIME: "log_append_time",
        }.get(ts_type)
        raw_headers = msg.headers() or []
        return cls(
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            timestamp=ts if kind is not None else None,
            timestamp_type=kind,
            key=msg.key(),
            value=msg.value(),
            headers=[(k, v) for k, v in raw_headers],
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: bytes become UTF-8 text, or base64 when not valid UTF-8.

        ``key_encoding``/``value_encoding`` (and each header's ``value_encoding``) say which:
        "utf-8", "base64", or null for a null key/value.
        """
        key, key_enc = decode_bytes(self.key)
        value, value_enc = decode_bytes(self.value)
        headers = []
        for hk, hv in self.headers:
            text, enc = decode_bytes(hv)
            headers.append({"key": hk, "value": text, "value_encoding": enc})
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "timestamp_type": self.timestamp_type,
            "key": key,
            "key_encoding": key_enc,
            "headers": headers,
            "value": value,
            "value_encoding": value_enc,
        }


def _watermarks(consumer: Consumer, topic: str, partition: int, timeout: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout, cached=False
        )
    except KafkaException as exc:
        raise translate_error(exc, "get offsets", topic) from exc
    return low, high


def _resolve_start(
    consumer: Consumer,
    topic: str,
    partitions: Sequence[int],
    start: StartAt,
    timeout: float,
) -> list[TopicPartition]:
    """Concrete (or logical) start offsets for each partition."""
    if start.kind == "beginning":
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    if start.kind == "end":
        return [TopicPartition(topic, p, OFFSET_END) for p in partitions]
    if start.kind == "committed":
        return [TopicPartition(topic, p, OFFSET_STORED) for p in partitions]
    if start.kind == "offset":
        n = int(start.value or 0)
        out = []
        for p in partitions:
            low, high = _watermarks(consumer, topic, p, timeout)
            if n < 0:
                out.append(TopicPartition(topic, p, max(high + n, low)))
            elif low <= n <= high:
                out.append(TopicPartition(topic, p, n))
            else:
                raise KopsClientError(
                    f"offset {n} is out of range for partition {p} of {topic!r} "
                    f"(log start {low}, end {high})",
                    code="OFFSET_OUT_OF_RANGE",
                )
        return out
    if start.kind == "timestamp":
        ms = int(start.value or 0)
        query = [TopicPartition(topic, p, ms) for p in partitions]
        try:
            found = consumer.offsets_for_times(query, timeout=timeout)
        except KafkaException as exc:
            raise translate_error(exc, "look up offsets by time", topic) from exc
        out = []
        for tp in found:
            if tp.error is not None:
                raise translate_error(KafkaException(tp.error), "look up offsets by time", topic)
            # -1: no record at or after the timestamp, so start at the end.
            out.append(
                TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
            )
        return out
    raise ValueError(f"unknown start kind {start.kind!r}")


def consume(
    target: ClientSettings | str,
    topic: str,
    *,
    start: StartAt | None = None,
    partitions: Sequence[int] | None = None,
    group: str | None = None,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    stop_at_end: bool = False,
    config: dict[str, Any] | None = None,
    on_unreachable: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[ConsumedRecord]:
    """Yield records from ``topic`` until a stop condition holds.

    Stops after ``max_messages`` records, after ``idle_timeout`` seconds with no new record,
    or (``stop_at_end``) once every partition has reached the end it had when reached; else
    runs until the caller stops iterating. ``stop`` (e.g. set by a SIGTERM handler) ends the
    generator between records, within a fraction of a second: the record last handed out
    is marked done first and no further one is handed out, so with ``group`` the close
    commits exactly what the caller was given. ``start`` defaults to the end (new records only),
    or to the group's committed offsets when ``group`` is given.

    With ``group`` and no ``partitions`` the consumer subscribes (group rebalancing); with
    ``partitions`` it assigns them directly. Raises :class:`kops.client.KopsClientError`
    (at once when no broker answers at start). When the cluster goes away later, reading
    goes on retrying; ``on_unreachable`` is then called with a one-line reason (at most
    every 10 s while it lasts), so a follower is never silently stuck.
    """
    settings = ClientSettings.of(target)
    if start is None:
        start = StartAt.committed("latest") if group else StartAt.end()
    if start.kind == "committed" and not group:
        raise KopsClientError("starting from committed offsets needs a consumer group")
    if max_messages is not None and max_messages <= 0:
        return

    watch = ErrorWatch(settings.bootstrap)
    extra: dict[str, Any] = {"enable.partition.eof": True}
    if start.kind == "committed":
        extra["auto.offset.reset"] = start.value or "latest"
    if group:
        # Commit what the caller has seen: offsets are stored by hand after each record.
        extra["enable.auto.commit"] = True
    extra.update(config or {})
    group_id = group or f"kops-cli-{uuid.uuid4().hex[:12]}"
    consumer = Consumer(settings.consumer_config(group_id, watch, **extra))
    try:
        md = fetch_metadata(consumer, watch, settings.timeout, topic)
        available = sorted(md.topics[topic].partitions)
        if partitions:
            missing = [p for p in partitions if p not in available]
            if missing:
                raise KopsClientError(
                    f"topic {topic!r} has no partition {', '.join(map(str, missing))} "
                    f"(partitions 0..{len(available) - 1})",
                    code="UNKNOWN_TOPIC_OR_PART",
                )
            selected = list(dict.fromkeys(partitions))
        else:
            selected = available

        positioned: set[int] = set()
        pending_error: list[BaseException] = []

        if group and not partitions:

            def on_assign(c: Consumer, assigned: list[TopicPartition]) -> None:
                fresh = [tp.partition for tp in assigned if tp.partition not in positioned]
                if start.kind == "committed" or not fresh:
                    return
                try:
                    resolved = {
                        tp.partition: tp
                        for tp in _resolve_start(c, topic, fresh, start, settings.timeout)
                    }
                except BaseException as exc:  # surfaced from the poll loop
                    pending_error.append(exc)
                    return
                positioned.update(fresh)
                c.assign([resolved.get(tp.partition, tp) for tp in assigned])

            consumer.subscribe([topic], on_assign=on_assign)
        else:
            consumer.assign(_resolve_start(consumer, topic, selected, start, settings.timeout))

        if on_unreachable is not None:  # from now on, an outage is reported, not fatal
            watch.what = f"consume {topic}"
            watch.log_every = 10.0
            watch.notify = on_unreachable
        yield from _poll_loop(
            consumer,
            selected=None if (group and not partitions) else set(selected),
            max_messages=max_messages,
            idle_timeout=idle_timeout,
            stop_at_end=stop_at_end,
            store_offsets=bool(group),
            pending_error=pending_error,
            stop=stop,
        )
    finally:
        close_consumer(consumer, subscribed=bool(group and not partitions))


def _poll_loop(
    consumer: Consumer,
    *,
    selected: set[int] | None,
    max_messages: int | None,
    idle_timeout: float | None,
    stop_at_end: bool,
    store_offsets: bool,
    pending_error: list[BaseException],
    stop: threading.Event | None = None,
) -> Iterator[ConsumedRecord]:
    count = 0
    at_end: set[int] = set()
    idle = IdleClock(idle_timeout)
    while True:
        if stop is not None and stop.is_set():
            return
        wait = 0.5 if stop is None else 0.2
        left = idle.left(consumer)
        if left is not None:
            if left <= 0:
                return
            wait = min(wait, left)
        msg = consumer.poll(wait)
        if pending_error:
            raise pending_error[0]
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
                if stop_at_end:
                    wanted = (
                        selected
                        if selected is not None
                        else {tp.partition for tp in consumer.assignment()}
                    )
                    if wanted and wanted <= at_end:
                        return
                continue
            if err.retriable() or err.code() in (
                KafkaError._TRANSPORT,
                KafkaError._ALL_BROKERS_DOWN,
            ):
                continue
            raise translate_error(KafkaException(err), "consume", msg.topic())
        at_end.discard(msg.partition())
        idle.touch()
        if stop is not None and stop.is_set():
            return  # not handed out, not stored: the group reads it again next time
        yield ConsumedRecord.from_message(msg)
        if store_offsets:
            consumer.store_offsets(message=msg)
        count += 1
        if max_messages is not None and count >= max_messages:
            return
