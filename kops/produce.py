"""Produce records with confluent-kafka: acks=all, every delivery checked.

Example::

    from kops.produce import OutgoingRecord, produce_records, records_from_lines
    report = produce_records("127.0.0.1:9092", "orders", [OutgoingRecord(b"hello", key=b"k1")])
    assert report.ok, report.errors

    with open("lines.txt", "rb") as f:
        report = produce_records(bootstrap, "orders", records_from_lines(f, key_separator=b":"))
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from kops.client import ClientSettings, ErrorWatch, KopsClientError, fetch_metadata

__all__ = [
    "InputError",
    "OutgoingRecord",
    "ProduceReport",
    "produce_records",
    "records_from_lines",
]

_MAX_ERRORS_KEPT = 5


class InputError(ValueError):
    """A line of input could not be turned into a record (e.g. no key separator)."""


@dataclass(frozen=True)
class OutgoingRecord:
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()
    partition: int | None = None
    #: Create time in epoch ms; None lets the client stamp it.
    timestamp: int | None = None


@dataclass
class ProduceReport:
    topic: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    #: The first few distinct delivery errors, one line each.
    errors: list[str] = field(default_factory=list)
    #: Delivered records per partition.
    partitions: Counter[int] = field(default_factory=Counter)
    #: Set when the input iterator raised :class:`InputError`; records before it were sent.
    input_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.input_error is None and self.delivered == self.sent


def records_from_lines(
    lines: Iterable[bytes],
    *,
    key: bytes | None = None,
    key_separator: bytes | None = None,
    headers: Sequence[tuple[str, bytes | None]] = (),
    partition: int | None = None,
) -> Iterator[OutgoingRecord]:
    """One record per line (the trailing newline is dropped).

    With ``key_separator`` each line is ``KEY<sep>VALUE`` split at the first separator; a line
    without it raises :class:`InputError`. ``key`` sets one fixed key for every record.
    """
    if key is not None and key_separator is not None:
        raise InputError("give either a fixed key or a key separator, not both")
    if key_separator == b"":
        raise InputError("the key separator must not be empty")
    for lineno, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        rec_key = key
        if key_separator is not None:
            k, sep, v = line.partition(key_separator)
            if not sep:
                shown = key_separator.decode("utf-8", "replace")
                raise InputError(f"line {lineno}: no key separator {shown!r} found")
            rec_key, line = k, v
        yield OutgoingRecord(line, key=rec_key, headers=headers, partition=partition)


def produce_records(
    target: ClientSettings | str,
    topic: str,
    records: Iterable[OutgoingRecord],
    *,
    config: dict[str, object] | None = None,
) -> ProduceReport:
    """Send ``records`` to ``topic``, flush, and report what was delivered.

    The topic must exist (topics are never auto-created). Raises
    :class:`kops.client.KopsClientError` for an unknown topic or partition or an unreachable
    cluster; per-record delivery failures are counted in the report instead.
    """
    settings = ClientSettings.of(target)
    watch = ErrorWatch(settings.bootstrap)
    report = ProduceReport(topic)
    lock = threading.Lock()

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        with lock:
            if err is not None:
                report.failed += 1
                text = f"{err.str()} ({err.name()})"
                if text not in report.errors and len(report.errors) < _MAX_ERRORS_KEPT:
                    report.errors.append(text)
            else:
                report.delivered += 1
                report.partitions[msg.partition()] += 1

    producer = Producer(settings.producer_config(watch, **(config or {})))
    md = fetch_metadata(producer, watch, settings.timeout, topic)
    n_partitions = len(md.topics[topic].partitions)

    try:
        for rec in records:
            if rec.partition is not None and not 0 <= rec.partition < n_partitions:
                raise KopsClientError(
                    f"partition {rec.partition} does not exist: topic {topic!r} has "
                    f"{n_partitions} partition{'s' if n_partitions != 1 else ''}",
                    code="UNKNOWN_TOPIC_OR_PART",
                )
            kwargs: dict[str, object] = {"on_delivery": on_delivery}
            if rec.key is not None:
                kwargs["key"] = rec.key
            if rec.headers:
                kwargs["headers"] = list(rec.headers)
            if rec.partition is not None:
                kwargs["partition"] = rec.partition
            if rec.timestamp is not None:
                kwargs["timestamp"] = rec.timestamp
            while True:
                try:
                    producer.produce(topic, rec.value, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)  # local queue full: let deliveries drain
            report.sent += 1
            producer.poll(0)
    except InputError as exc:
        report.input_error = str(exc)
    finally:
        timeout_s = float(producer_timeout_ms(settings, config)) / 1000 + 5
        left = producer.flush(timeout_s)
        if left:
            with lock:
                report.failed += left
                report.errors.append(f"{left} record(s) still undelivered after {timeout_s:g}s")
    return report


def producer_timeout_ms(settings: ClientSettings, config: dict[str, object] | None) -> int:
    merged = settings.producer_config(None, **(config or {}))
    value = merged.get("delivery.timeout.ms", merged.get("message.timeout.ms", 30000))
    return int(str(value))
