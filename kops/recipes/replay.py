"""Copy a time window of a topic into another topic: a rewind that touches no group.

Consumers of the source keep their offsets; whoever needs the old records again reads the
copy. Keys, values, headers and timestamps are copied as they are. Records are read with
partitions assigned directly and nothing is ever committed.

Example::

    from kops.timeparse import parse_timestamp
    from kops.recipes.replay import replay
    report = replay(bootstrap, "orders", "orders-replay",
                    parse_timestamp("2024-05-01T10:00Z"), parse_timestamp("2024-05-01T11:00Z"))
    print(report.copied, report.per_partition)

The window is ``[from_ms, to_ms)``. Each partition is read from its first record at or
after ``from_ms`` up to its first record at or after ``to_ms`` (or the end it had when the
replay started), and only records whose own timestamp lies in the window are copied, so
out-of-order create times and brokers that look up times per batch do not widen it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from kops import admin as topics_admin
from kops.admin import list_offsets, offsets_for_time
from kops.client import (
    AdminSession,
    ClientSettings,
    ErrorWatch,
    KopsClientError,
    UnknownTopic,
    translate_error,
)
from kops.consume import format_timestamp
from kops.produce import OutgoingRecord, produce_records
from kops.recipes.offsets import topic_partitions
from kops.recipes.pacing import Pacer

__all__ = ["PartitionWindow", "ReplayReport", "plan_window", "replay"]

#: Give up when no record arrives for this long although the window is not finished.
STALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class PartitionWindow:
    partition: int
    #: First offset to read (None: no record at or after the window start).
    start: int | None
    #: Offset of the first record at or after the window end, if any.
    stop_at_time: int | None
    #: The partition's end when the replay started; never read past it.
    end: int

    @property
    def upper(self) -> int:
        return self.end if self.stop_at_time is None else min(self.stop_at_time, self.end)

    @property
    def estimate(self) -> int:
        """Records to read (approximate when the broker looks up times per batch)."""
        return 0 if self.start is None else max(self.upper - self.start, 0)


@dataclass
class ReplayReport:
    source: str
    destination: str
    from_ms: int
    to_ms: int
    read: int = 0
    copied: int = 0
    #: Read but left out because their timestamp is outside the window.
    outside_window: int = 0
    failed: int = 0
    per_partition: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    #: Stopped (``stop`` set) before the window was read to its end: the copy holds what
    #: was read so far (flushed), not the whole window.
    partial: bool = False

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "from": format_timestamp(self.from_ms),
            "to": format_timestamp(self.to_ms),
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "read": self.read,
            "copied": self.copied,
            "outside_window": self.outside_window,
            "failed": self.failed,
            "per_partition": {str(p): n for p, n in sorted(self.per_partition.items())},
            "errors": self.errors,
            "elapsed_seconds": round(self.elapsed, 3),
            "partial": self.partial,
        }


def plan_window(
    target: ClientSettings | str,
    topic: str,
    from_ms: int,
    to_ms: int,
    partitions: Sequence[int] | None = None,
) -> list[PartitionWindow]:
    """Offsets bounding ``[from_ms, to_ms)`` in each partition of ``topic``."""
    if to_ms <= from_ms:
        raise KopsClientError(
            f"empty window: --to ({format_timestamp(to_ms)}) must be after --from "
            f"({format_timestamp(from_ms)})"
        )
    with AdminSession(target) as admin:
        existing = topic_partitions(admin, topic)
        selected = list(dict.fromkeys(partitions)) if partitions else existing
        missing = [p for p in selected if p not in existing]
        if missing:
            raise KopsClientError(
                f"topic {topic!r} has no partition {', '.join(map(str, missing))}",
                code="UNKNOWN_TOPIC_OR_PART",
            )
        keys = [(topic, p) for p in selected]
        ends = list_offsets(admin, keys, OffsetSpec.latest())
        starts = offsets_for_time(admin, keys, from_ms)
        stops = offsets_for_time(admin, keys, to_ms)
    return [
        PartitionWindow(p, starts[(topic, p)], stops[(topic, p)], ends[(topic, p)] or 0)
        for p in selected
    ]


def replay(
    target: ClientSettings | str,
    topic: str,
    into: str,
    from_ms: int,
    to_ms: int,
    *,
    partitions: Sequence[int] | None = None,
    rate: float | None = None,
    keep_partition: bool = False,
    create: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Copy records of ``topic`` with timestamps in ``[from_ms, to_ms)`` into ``into``.

    ``rate`` caps records per second. ``keep_partition`` writes each record to the same
    partition number (else the producer's partitioner places it by key). ``create`` makes
    ``into`` (with the source's partition count) when it does not exist. ``progress`` is
    called with (records read so far, estimated total). Raises
    :class:`kops.client.KopsClientError`; per-record delivery failures are in the report.

    ``stop`` (e.g. set by a SIGTERM handler) ends the reading within a fraction of a second,
    also while no record is arriving: what was read is flushed into ``into`` and the report
    is returned with ``partial`` set (nothing is raised).
    """
    settings = ClientSettings.of(target)
    if into == topic:
        raise KopsClientError("the destination must differ from the source topic")
    if rate is not None and rate <= 0:
        raise KopsClientError("the rate must be positive")
    windows = plan_window(settings, topic, from_ms, to_ms, partitions)
    _ensure_destination(settings, topic, into, create)

    report = ReplayReport(topic, into, from_ms, to_ms)
    started = time.monotonic()
    records = _read_window(settings, topic, windows, from_ms, to_ms, report, rate, progress, stop)
    produced = produce_records(
        settings,
        into,
        (
            OutgoingRecord(
                value=msg.value(),
                key=msg.key(),
                headers=msg.headers() or (),
                partition=msg.partition() if keep_partition else None,
                timestamp=ts,
            )
            for msg, ts in records
        ),
    )
    report.copied = produced.delivered
    report.failed = produced.failed
    report.errors.extend(produced.errors)
    report.elapsed = time.monotonic() - started
    return report


def _ensure_destination(settings: ClientSettings, topic: str, into: str, create: bool) -> None:
    try:
        with AdminSession(settings) as admin:
            admin.metadata(into)
    except UnknownTopic:
        if not create:
            raise UnknownTopic(
                f"unknown topic {into!r} (create it first, or pass --create)",
                code="UNKNOWN_TOPIC_OR_PART",
            ) from None
        info = topics_admin.describe_topic(settings, topic)
        topics_admin.create_topic(settings, into, len(info.partitions))


def _read_window(
    settings: ClientSettings,
    topic: str,
    windows: list[PartitionWindow],
    from_ms: int,
    to_ms: int,
    report: ReplayReport,
    rate: float | None,
    progress: Callable[[int, int], None] | None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[Any, int | None]]:
    """Yield (message, timestamp) for records inside the window, partition by partition
    interleaved as the broker delivers them; end early (``report.partial``) once ``stop``
    is set."""
    todo = {w.partition: w for w in windows if w.start is not None and w.start < w.end}
    total = sum(w.estimate for w in todo.values())
    if progress is not None:
        progress(0, total)
    if not todo:
        return
    watch = ErrorWatch(settings.bootstrap)
    # A throwaway group id: partitions are assigned, never subscribed, and nothing is
    # committed, so no group's offsets change.
    consumer = Consumer(
        settings.consumer_config(
            f"kops-replay-{uuid.uuid4().hex[:12]}", watch, **{"enable.partition.eof": True}
        )
    )
    pacer = Pacer(rate, stop=stop)
    stopped = stop.is_set if stop is not None else (lambda: False)
    try:
        consumer.assign([TopicPartition(topic, p, w.start) for p, w in todo.items()])
        last_progress = time.monotonic()
        while todo:
            if stopped():
                report.partial = True
                return
            batch = consumer.consume(num_messages=500, timeout=0.2 if stop else 0.5)
            if not batch:
                watch.check()
                if time.monotonic() - last_progress > STALL_TIMEOUT:
                    raise KopsClientError(
                        f"replay stalled: no record from {topic!r} for {STALL_TIMEOUT:g}s "
                        f"with partitions {sorted(todo)} unfinished"
                    )
                continue
            last_progress = time.monotonic()
            for msg in batch:
                if stopped():
                    report.partial = True
                    return
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        _finish(consumer, topic, todo, p)
                        continue
                    if err.retriable():
                        continue
                    raise translate_error(KafkaException(err), "read", topic)
                w = todo.get(p)
                if w is None:
                    continue  # fetched before the partition was paused
                ts_type, ts = msg.timestamp()
                ts_value = None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts
                off = msg.offset()
                if off >= w.end or (
                    w.stop_at_time is not None
                    and off >= w.stop_at_time
                    and ts_value is not None
                    and ts_value >= to_ms
                ):
                    _finish(consumer, topic, todo, p)
                    continue
                report.read += 1
                if progress is not None:
                    progress(report.read, max(total, report.read))
                if off + 1 >= w.end:
                    _finish(consumer, topic, todo, p)
                if ts_value is None or not from_ms <= ts_value < to_ms:
                    report.outside_window += 1
                    continue
                pacer.pace()
                if stopped():  # woken from the pacer's wait: this record is not copied
                    report.read -= 1
                    report.partial = True
                    return
                report.per_partition[p] += 1
                yield msg, ts_value
    finally:
        consumer.close()


def _finish(consumer: Consumer, topic: str, todo: dict[int, PartitionWindow], p: int) -> None:
    if todo.pop(p, None) is not None:
        consumer.pause([TopicPartition(topic, p)])
