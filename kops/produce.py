"""Produce records with confluent-kafka: acks=all, every delivery checked.

Two helpers every producing piece of kops uses (CLI, recipes, worker jobs):

- :func:`produce_with_room`: ``Producer.produce`` that, when the local queue is full
  (``BufferError``), serves delivery reports until there is room and tries again. It never
  drops the record.
- :class:`DeliveryTracker`: an ``on_delivery`` callback that checks every delivery report,
  counts deliveries and failures and keeps the first few distinct errors.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from kops.client import ClientSettings, ErrorWatch, KopsClientError, fetch_metadata
from kops.errors import KopsError

__all__ = [
    "DeliveryTracker",
    "InputError",
    "OutgoingRecord",
    "ProduceReport",
    "produce_records",
    "produce_with_room",
    "records_from_lines",
    "send_record",
]

_MAX_ERRORS_KEPT = 5


def produce_with_room(
    producer: Producer,
    topic: str,
    *args: Any,
    poll_timeout: float = 0.1,
    on_full: Callable[[], None] | None = None,
    **kwargs: Any,
) -> None:
    """``producer.produce(topic, *args, **kwargs)``, waiting for room when the queue is full.

    librdkafka raises ``BufferError`` when ``queue.buffering.max.messages`` (or ``.kbytes``)
    records are waiting; then this serves delivery reports (``poll(poll_timeout)``) and tries
    again, as long as it takes: the record is never dropped. Every queued record leaves the
    queue within ``delivery.timeout.ms`` (delivered or failed), so the wait ends. ``on_full``
    runs after each wait: raise from it to give up (e.g. when a delivery already failed).
    """
    while True:
        try:
            producer.produce(topic, *args, **kwargs)
            return
        except BufferError:
            producer.poll(poll_timeout)
            if on_full is not None:
                on_full()


class DeliveryTracker:
    """An ``on_delivery`` callback that checks every delivery report.

    Counts ``delivered`` and ``failed`` records (and delivered records per partition), keeps
    the first ``max_errors`` distinct errors as one-line texts and the first
    ``KafkaError``. Call :meth:`sent` for each record handed to the producer to know how many
    are still ``outstanding``. ``then`` is called with each report after it is counted.
    Callbacks may run on any thread polling the producer: counting is locked.
    """

    def __init__(
        self,
        *,
        max_errors: int = 5,
        then: Callable[[KafkaError | None, Message], None] | None = None,
    ):
        self.max_errors = max_errors
        self.then = then
        self.queued = 0
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []
        self.first_error: KafkaError | None = None
        self.partitions: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is not None:
                self.failed += 1
                if self.first_error is None:
                    self.first_error = err
                self._note(f"{err.str()} ({err.name()})")
            else:
                self.delivered += 1
                self.partitions[msg.partition()] += 1
        if self.then is not None:
            self.then(err, msg)

    def _note(self, text: str) -> None:
        if text not in self.errors and len(self.errors) < self.max_errors:
            self.errors.append(text)

    def sent(self, n: int = 1) -> None:
        """Count ``n`` records handed to the producer with this tracker as callback."""
        with self._lock:
            self.queued += n

    @property
    def outstanding(self) -> int:
        """Records sent whose delivery report has not come yet."""
        with self._lock:
            return self.queued - self.delivered - self.failed

    @property
    def undelivered(self) -> int:
        """Records sent and not (yet) delivered: failed or still outstanding."""
        with self._lock:
            return self.queued - self.delivered

    def flush(self, producer: Producer, timeout: float) -> int:
        """Flush ``producer``; return the records not delivered (failed or not acknowledged
        within ``timeout``)."""
        left = producer.flush(timeout)
        with self._lock:
            if left:
                self._note(f"{left} record(s) not acknowledged within {timeout:g}s")
            return self.queued - self.delivered

    def summary(self, what: str = "records") -> str:
        """``"3 of 2000 records not delivered: <first error>; ..."``."""
        with self._lock:
            n = self.queued - self.delivered
            detail = "; ".join(self.errors) or "not acknowledged"
            return f"{n} of {self.queued} {what} not delivered: {detail}"


class InputError(KopsError, ValueError):
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
    #: Records sent and not delivered: failed, or not acknowledged before the flush timeout.
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

    def summary(self) -> str:
        """``"3 of 2000 records not delivered: <errors>"`` (empty when all were delivered)."""
        if self.failed == 0 and self.delivered == self.sent:
            return ""
        detail = "; ".join(self.errors) or "not acknowledged"
        return f"{self.sent - self.delivered} of {self.sent} records not delivered: {detail}"


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
    tracker = DeliveryTracker(max_errors=_MAX_ERRORS_KEPT)
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
            send_record(producer, topic, rec, tracker)
            tracker.sent()
            producer.poll(0)
    except InputError as exc:
        report.input_error = str(exc)
    finally:
        timeout_s = float(producer_timeout_ms(settings, config)) / 1000 + 5
        tracker.flush(producer, timeout_s)
        report.sent = tracker.queued
        report.delivered = tracker.delivered
        report.failed = tracker.undelivered
        report.errors = list(tracker.errors)
        report.partitions = Counter(tracker.partitions)
    return report


def send_record(
    producer: Producer,
    topic: str,
    rec: OutgoingRecord,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    """Hand ``rec`` to ``producer`` (:func:`produce_with_room`: never dropped)."""
    kwargs: dict[str, object] = {"on_delivery": on_delivery}
    if rec.key is not None:
        kwargs["key"] = rec.key
    if rec.headers:
        kwargs["headers"] = list(rec.headers)
    if rec.partition is not None:
        kwargs["partition"] = rec.partition
    if rec.timestamp is not None:
        kwargs["timestamp"] = rec.timestamp
    produce_with_room(producer, topic, rec.value, **kwargs)


def producer_timeout_ms(settings: ClientSettings, config: dict[str, object] | None) -> int:
    merged = settings.producer_config(None, **(config or {}))
    value = merged.get("delivery.timeout.ms", merged.get("message.timeout.ms", 30000))
    return int(str(value))
