"""Copy a time window of a topic into another topic: a rewind that touches no group.

Consumers of the source keep their offsets; whoever needs the old records again reads the
copy. Keys, values, headers and timestamps are copied as they are. Records are read with
partitions assigned directly and nothing is ever committed (unless ``exactly_once``).

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

With ``exactly_once`` the replay is resumable and copies every record of the window once
(for readers with ``isolation.level=read_committed``), however often it is stopped or
killed: it reads with read_committed in a consumer group of its own (``group``, default
:func:`replay_group`: ``kops.replay.<topic>.<into>.<from_ms>-<to_ms>``) and copies the
window in rounds (at most :data:`ROUND_RECORDS` records, or what was read in
:data:`ROUND_SECONDS`), each round's records and the group's offsets after them in one
transaction (:mod:`kops.recipes.exactly_once`). The transactional id follows the group
(``kops.replay.<topic>.<into>.<from_ms>-<to_ms>`` by default, else ``kops.replay.<group>``),
so a re-run fences a killed run and aborts what it left open at once. An aborted round is
sent again from the records held. A re-run with the same arguments resumes after the last
committed round; once the window is done (``report.done``) a re-run copies nothing. The
commits' metadata fixes each partition's end as the first run found it. The cluster must
serve transactions (:class:`~kops.recipes.exactly_once.TransactionsUnsupported` otherwise).
"""

from __future__ import annotations

import json
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
from kops.produce import OutgoingRecord, produce_records, send_record
from kops.recipes.exactly_once import (
    ProducerFenced,
    TransactionalSender,
    fenced,
    read_committed,
    transactional_id,
    transactional_producer,
)
from kops.recipes.offsets import topic_partitions
from kops.recipes.pacing import Pacer

__all__ = ["PartitionWindow", "ReplayReport", "plan_window", "replay", "replay_group"]

#: Give up when no record arrives for this long although the window is not finished.
STALL_TIMEOUT = 30.0

#: An exactly-once round (one transaction) holds at most this many records...
ROUND_RECORDS = 500
#: ...or what was read in this long.
ROUND_SECONDS = 0.5

#: Commit metadata of an exactly-once replay's group starts with this, then JSON.
METADATA_PREFIX = "kops-replay:"

_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


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
    #: exactly_once: the group holding the replay's progress.
    group: str | None = None
    #: exactly_once: an earlier run's commits were found, and this run went on from them.
    resumed: bool = False
    #: exactly_once: the whole window is copied (by this run and earlier ones).
    done: bool = False

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
            **(
                {"group": self.group, "resumed": self.resumed, "done": self.done}
                if self.group is not None
                else {}
            ),
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
    exactly_once: bool = False,
    group: str | None = None,
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

    ``exactly_once``: copy in transactions, resumable (see the module docstring); ``group``
    names the consumer group keeping the progress (default :func:`replay_group`). Delivery
    failures then raise instead of being counted.
    """
    settings = ClientSettings.of(target)
    if into == topic:
        raise KopsClientError("the destination must differ from the source topic")
    if rate is not None and rate <= 0:
        raise KopsClientError("the rate must be positive")
    if group is not None and not exactly_once:
        raise KopsClientError("a group keeps an exactly-once replay's progress: add exactly_once")
    windows = plan_window(settings, topic, from_ms, to_ms, partitions)
    _ensure_destination(settings, topic, into, create)

    report = ReplayReport(topic, into, from_ms, to_ms)
    started = time.monotonic()
    if exactly_once:
        report.group = group or replay_group(topic, into, from_ms, to_ms)
        _Resumable(settings, report, windows, stop or threading.Event()).run(
            rate, keep_partition, progress
        )
        report.elapsed = time.monotonic() - started
        return report
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
    consumer: Consumer | None = None,
    positions: dict[int, int] | None = None,
) -> Iterator[tuple[Any, int | None]]:
    """Yield (message, timestamp) for records inside the window, partition by partition
    interleaved as the broker delivers them; end early (``report.partial``) once ``stop``
    is set.

    With ``consumer`` (left open) the window is read with it. ``positions`` (partition ->
    offset) is kept at where a reader that stopped at the last record yielded would go on
    from: the window's end for a partition finished."""
    todo = {w.partition: w for w in windows if w.start is not None and w.start < w.end}
    total = sum(w.estimate for w in todo.values())
    if progress is not None:
        progress(0, total)
    if not todo:
        return
    positions = {} if positions is None else positions
    watch = ErrorWatch(settings.bootstrap)
    # A throwaway group id: partitions are assigned, never subscribed, and nothing is
    # committed, so no group's offsets change.
    own = consumer is None
    consumer = consumer or Consumer(
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
                        if (w := todo.get(p)) is not None:
                            # (read_committed stops short of the end at an open transaction)
                            positions[p] = min(msg.offset(), w.end)
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
                    positions[p] = w.end  # nothing further of the window here
                    _finish(consumer, topic, todo, p)
                    continue
                report.read += 1
                if progress is not None:
                    progress(report.read, max(total, report.read))
                if off + 1 >= w.end:
                    _finish(consumer, topic, todo, p)
                after = w.end if off + 1 >= w.end else off + 1
                if ts_value is None or not from_ms <= ts_value < to_ms:
                    report.outside_window += 1
                    positions[p] = after
                    continue
                pacer.pace()
                if stopped():  # woken from the pacer's wait: this record is not copied
                    report.read -= 1
                    report.partial = True
                    return
                report.per_partition[p] += 1
                positions[p] = after
                yield msg, ts_value
    finally:
        if own:
            consumer.close()


def _finish(consumer: Consumer, topic: str, todo: dict[int, PartitionWindow], p: int) -> None:
    if todo.pop(p, None) is not None:
        consumer.pause([TopicPartition(topic, p)])


# --------------------------------------------------------------------------- exactly_once


def replay_group(topic: str, into: str, from_ms: int, to_ms: int) -> str:
    """The consumer group of an exactly-once replay: the same for a re-run with the same
    arguments, so it resumes."""
    return f"kops.replay.{topic}.{into}.{from_ms}-{to_ms}"


class _Resumable:
    """An exactly-once replay: the window copied in transactions, from the group's commits."""

    def __init__(
        self,
        settings: ClientSettings,
        report: ReplayReport,
        windows: list[PartitionWindow],
        stop: threading.Event,
    ):
        assert report.group is not None
        self.settings, self.report, self.stop = settings, report, stop
        self.group = report.group
        self.topic, self.into = report.source, report.destination
        watch = ErrorWatch(settings.bootstrap)
        config = settings.consumer_config(self.group, watch, **{"enable.partition.eof": True})
        self.consumer = Consumer(read_committed(config))
        self.what = f"replay into {self.into} (group {self.group})"
        try:
            # Before the commits are read: a killed run's open transaction is aborted.
            txn_id = transactional_id("replay", self.group.removeprefix("kops.replay."))
            self.producer = transactional_producer(settings, txn_id, watch=watch)
        except BaseException:
            self.consumer.close()
            raise
        self.sender = TransactionalSender(self.producer, self.consumer, what=self.what, stop=stop)
        self.windows = windows
        self.committed: dict[int, int] = {}  # partition -> offset committed
        self.positions: dict[int, int] = {}  # partition -> offset after what was read

    def run(
        self, rate: float | None, keep_partition: bool, progress: Callable[[int, int], None] | None
    ) -> None:
        try:
            self._resume()
            report = self.report
            reader = _read_window(
                self.settings, self.topic, self.windows, report.from_ms, report.to_ms, report,
                rate, progress, self.stop, consumer=self.consumer, positions=self.positions,
            )  # fmt: skip
            held: list[OutgoingRecord] = []
            round_ends = 0.0
            for msg, ts in reader:
                if not held:
                    round_ends = time.monotonic() + ROUND_SECONDS
                part = msg.partition() if keep_partition else None
                held.append(OutgoingRecord(msg.value(), msg.key(), msg.headers() or (), part, ts))
                if len(held) >= ROUND_RECORDS or time.monotonic() >= round_ends:
                    if not self._commit_round(held):
                        return
                    held = []
            # The rest, and the partitions finished after the last record copied.
            if self._commit_round(held):
                report.done = all(
                    self.committed.get(w.partition, -1) >= w.end for w in self.windows
                )
        finally:
            self.sender.close()
            self.consumer.close()

    def _resume(self) -> None:
        """Windows from the group's commits: a partition committed before goes on from its
        commit, up to the end the first run found (kept in the commit's metadata)."""
        tps = [TopicPartition(self.topic, w.partition) for w in self.windows]
        try:
            found = self.consumer.committed(tps, timeout=self.settings.timeout)
        except KafkaException as exc:
            raise translate_error(exc, "fetch committed offsets", self.group) from exc
        resumed = []
        for w, tp in zip(self.windows, found, strict=True):
            if tp.error is not None:
                raise translate_error(KafkaException(tp.error), "fetch committed offsets")
            if tp.offset < 0:
                resumed.append(w)
                self.positions[w.partition] = w.end if w.start is None else min(w.start, w.end)
                continue
            end = self._end_in(tp.metadata)
            resumed.append(PartitionWindow(w.partition, tp.offset, w.stop_at_time, end))
            self.committed[w.partition] = self.positions[w.partition] = tp.offset
            self.report.resumed = True
        self.windows = resumed

    def _end_in(self, metadata: str | None) -> int:
        r = self.report
        data: Any = None
        if metadata and metadata.startswith(METADATA_PREFIX):
            try:
                data = json.loads(metadata[len(METADATA_PREFIX) :])
            except ValueError:
                data = None
        if not isinstance(data, dict) or not isinstance(data.get("end"), int):
            raise KopsClientError(
                f"group {self.group!r} has offsets on {self.topic!r} that no replay committed: "
                "give another group"
            )
        if (data.get("from"), data.get("to"), data.get("into")) != (
            r.from_ms,
            r.to_ms,
            r.destination,
        ):
            raise KopsClientError(
                f"group {self.group!r} holds the progress of another replay (window "
                f"[{data.get('from')}, {data.get('to')}) into {data.get('into')!r}): give "
                "another group"
            )
        return int(data["end"])

    def _metadata(self, w: PartitionWindow) -> str:
        r = self.report
        window = {"from": r.from_ms, "to": r.to_ms, "into": r.destination, "end": w.end}
        return METADATA_PREFIX + json.dumps(window, separators=(",", ":"))

    def _commit_round(self, held: list[OutgoingRecord]) -> bool:
        """Copy ``held`` and commit the offsets read so far in one transaction, again after
        an abort. False: stopped before it committed (the next run does it again)."""
        offsets = [
            TopicPartition(self.topic, w.partition, self.positions[w.partition], self._metadata(w))
            for w in self.windows
            if self.positions.get(w.partition) not in (None, self.committed.get(w.partition))
        ]
        if not held and not offsets:
            return True
        while (failures := self._try_round(held, offsets)) is not None:
            err = failures[0] if failures else None
            if err is not None and (gone := fenced(err, self.what)) is not None:
                raise self._fenced(gone)
            if err is not None and not err.retriable():
                raise translate_error(KafkaException(err), "replay into", self.into)
            if self.stop.wait(0.2):
                self.report.partial = True
                return False
        self.report.copied += len(held)
        self.committed.update({tp.partition: tp.offset for tp in offsets})
        return True

    def _try_round(
        self, held: list[OutgoingRecord], offsets: list[TopicPartition]
    ) -> list[KafkaError] | None:
        """One transaction of the round. None: committed; else it aborted, and these
        deliveries failed in it."""
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            # An abort purges what was not delivered yet: that is its effect, no cause.
            if err is not None and err.code() not in _PURGED:
                failures.append(err)

        try:
            self.sender.begin()
            for rec in held:
                send_record(self.producer, self.into, rec, delivered)
            return None if self.sender.commit(offsets) else failures
        except KafkaException as exc:  # produce() refuses once the producer is fenced
            if (gone := fenced(exc, self.what)) is not None:
                raise self._fenced(gone) from None
            raise translate_error(exc, "replay into", self.into) from exc
        except ProducerFenced as exc:
            raise self._fenced(exc) from None

    def _fenced(self, exc: ProducerFenced) -> ProducerFenced:
        return ProducerFenced(
            f"{exc}: another run of this replay took over (group {self.group}); this one stops"
        )
