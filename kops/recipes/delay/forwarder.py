"""Tier forwarders: move delayed records on when they are due.

One consumer per tier topic, all in one consumer group (``kops.delay.forwarders``), so any
number of worker processes share the tiers' partitions. A tier partition holds records in
arrival order and they all wait the same time, so only its head needs checking:

- head due -> produce it to its target (or, when time remains, to the largest smaller tier:
  "cascading"), wait for the ack, then commit. Forward-then-commit with an idempotent
  producer: a crash at any point loses nothing; a record forwarded twice keeps its message id.
- head not due -> pause the partition (no fetching, no busy polling) and sleep until the
  head's release time, then resume.

A record's release time in tier T is ``min(due, arrival + T)``: it never leaves before its
due time (never early), and a record with less than T left (only in the smallest tier) is
not held longer than it needs. Before anything is delivered to its target the forwarder
catches up with the cancel topic, so a cancel acknowledged before the due time always wins.

Lateness (delivery time - due time, in ms) is kept per tier in memory and published every
``stats_interval`` seconds to the compacted stats topic (see :mod:`kops.recipes.delay.status`).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from kops.client import BrokerUnavailable, ClientSettings, ErrorWatch, KopsClientError
from kops.recipes import headers as h
from kops.recipes.delay.cancel import CancelView
from kops.recipes.delay.status import SAMPLES_PUBLISHED, LatenessStats
from kops.recipes.delay.tiers import (
    CANCEL_TOPIC,
    FORWARDER_GROUP,
    STATS_TOPIC,
    DelayTiers,
    ensure_tier_topics,
    format_tier,
)

__all__ = ["CancelView", "DelayForwarders", "ForwarderOptions", "LatenessStats", "TierForwarder"]

log = logging.getLogger("kops.delay")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _transient(exc: BaseException) -> bool:
    return (
        isinstance(exc, BrokerUnavailable)
        or (isinstance(exc, KopsClientError) and exc.retriable)
        or (isinstance(exc, KafkaException) and bool(exc.args) and exc.args[0].retriable())
    )


def _retry_transient(stop: threading.Event) -> Any:
    """Start-up calls ride out a broker that is still starting (e.g. under `kops up`);
    anything else, or a broker still away after a minute, fails the job and the worker
    retries it later."""
    return retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_delay(60) | stop_when_event_set(stop),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )


def default_instance() -> str:
    """Names this process in stats records: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ForwarderOptions:
    """How the forwarders run. Only ``tiers`` is required."""

    tiers: DelayTiers = field(default_factory=DelayTiers.parse)
    group: str = FORWARDER_GROUP
    cancel_topic: str | None = CANCEL_TOPIC
    stats_topic: str | None = STATS_TOPIC
    #: Seconds between stats records; 0 turns publishing off.
    stats_interval: float = 10.0
    #: Create missing tier/cancel/stats topics at start.
    create_topics: bool = True
    partitions: int = 1
    #: Static group membership (``group.instance.id = <instance_id>.<tier>``): a restarted
    #: worker with the same id takes its partitions back at once instead of after the
    #: session timeout.
    instance_id: str | None = None
    session_timeout_ms: int = 10000
    #: Most records forwarded per produce/ack/commit round.
    max_batch: int = 2000
    #: Most fetched records the smallest tier holds in memory before pausing.
    max_buffer: int = 20000


# --------------------------------------------------------------------------- delivery


class _Round:
    """Acks of one produce round; callbacks may run on any thread polling the producer."""

    def __init__(self, n: int):
        self.left = n
        self.errors: dict[int, KafkaError] = {}  # index in the round -> error
        self.done = threading.Event()
        self._lock = threading.Lock()
        if n == 0:
            self.done.set()

    def callback(self, index: int) -> Any:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            with self._lock:
                if err is not None:
                    self.errors[index] = err
                self.left -= 1
                if self.left <= 0:
                    self.done.set()

        return on_delivery


@dataclass
class _Pending:
    msg: Message
    release_ms: int
    due_ms: int | None
    message_id: str | None
    target: str | None
    done: bool = False


@dataclass
class _PartState:
    # Fetched records not yet committed past, in offset order; `heap` orders the ones not
    # yet forwarded by release time.
    buffer: deque[_Pending] = field(default_factory=deque)
    heap: list[tuple[int, int, _Pending]] = field(default_factory=list)
    last_seen: int = -1
    paused: bool = False
    retry_at_ms: int = 0
    failures: int = 0

    def next_release(self) -> int | None:
        if not self.heap:
            return None
        return max(self.heap[0][0], self.retry_at_ms)


class TierForwarder:
    """The forwarder of one tier topic: one consumer in the forwarders' group."""

    def __init__(
        self,
        settings: ClientSettings,
        options: ForwarderOptions,
        tier_seconds: float,
        producer: Producer,
        cancels: CancelView | None,
        stats: LatenessStats,
    ):
        self.settings = settings
        self.options = options
        self.tiers = options.tiers
        self.tier_ms = round(tier_seconds * 1000)
        self.label = format_tier(tier_seconds)
        self.topic = self.tiers.topic(tier_seconds)
        self.smallest = tier_seconds == self.tiers.seconds[0]
        self.producer = producer
        self.cancels = cancels
        self.stats = stats
        self.parts: dict[int, _PartState] = {}
        self._committed: dict[int, int] = {}  # partition -> offset last committed
        #: Set once the group has given this forwarder its partitions (maybe none).
        self.assigned = threading.Event()
        extra: dict[str, Any] = {
            "session.timeout.ms": options.session_timeout_ms,
            "heartbeat.interval.ms": max(500, options.session_timeout_ms // 5),
            "fetch.wait.max.ms": 100,
            # Paused partitions keep their head in memory; don't prefetch much beyond it.
            "queued.max.messages.kbytes": 8192,
        }
        if options.instance_id:
            extra["group.instance.id"] = f"{options.instance_id}.{self.label}"
        self.consumer = Consumer(
            settings.consumer_config(options.group, ErrorWatch(settings.bootstrap), **extra)
        )

    # -- group membership

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.parts[tp.partition] = _PartState()
        self.assigned.set()
        log.info("tier %s: assigned partitions %s", self.label, [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Everything forwarded up to the first unforwarded record has been committed (async,
        # after each round); commit it once more synchronously so the next owner starts
        # there. Records forwarded past it are forwarded again, with the same message id.
        self._commit_sync([tp.partition for tp in partitions])
        for tp in partitions:
            self.parts.pop(tp.partition, None)
            self._committed.pop(tp.partition, None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # no longer ours: committing would be refused
            self.parts.pop(tp.partition, None)
            self._committed.pop(tp.partition, None)

    def _commit_sync(self, partitions: Iterable[int]) -> None:
        offsets = [
            TopicPartition(self.topic, p, self._committed[p])
            for p in partitions
            if p in self._committed
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("tier %s: commit: %s", self.label, exc)

    # -- main loop

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not stop.is_set():
                self._take(self._fetch(self._wait_seconds()))
                self._forward_due()
                self._pause_or_resume()
        finally:
            self._commit_sync(list(self._committed))
            try:
                self.consumer.close()  # leaves the group at once, so peers take over quickly
            except KafkaException as exc:  # pragma: no cover
                log.warning("tier %s: close: %s", self.label, exc)

    def _fetch(self, timeout: float) -> list[Message]:
        # consume(n, timeout) waits for n records or the whole timeout; poll() returns at the
        # first record, and consume(n, 0) then takes whatever else is already queued.
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        return [first, *self.consumer.consume(self.options.max_batch - 1, 0)]

    def _wait_seconds(self) -> float:
        times = [t for st in self.parts.values() if (t := st.next_release()) is not None]
        if not times:
            return 0.5
        return min(0.5, max(0.0, (min(times) - _now_ms()) / 1000))

    def _take(self, msgs: list[Message]) -> None:
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("tier %s: %s", self.label, err.str())
                continue
            st = self.parts.get(m.partition())
            # Records at or before what we hold come from before a pause or seek: skip.
            if st is None or m.offset() <= st.last_seen:
                continue
            st.last_seen = m.offset()
            item = self._pending(m)
            st.buffer.append(item)
            heapq.heappush(st.heap, (item.release_ms, m.offset(), item))

    def _pending(self, m: Message) -> _Pending:
        hdrs = m.headers()
        due_text = h.get(hdrs, h.DELAY_DUE_MS)
        try:
            due = int(due_text) if due_text is not None else None
        except ValueError:
            due = None
        kind, ts = m.timestamp()
        arrival = ts if kind != 0 and ts > 0 else _now_ms()
        release = arrival + self.tier_ms
        if due is not None:
            release = min(release, due)
        return _Pending(m, release, due, h.get(hdrs, h.MESSAGE_ID), h.get(hdrs, h.DELAY_TARGET))

    def _forward_due(self) -> None:
        """Forward every fetched record whose release time has come.

        Usually that is the head; a record with less than a tier left (its release is its
        due time) may be due before the record ahead of it, and is not held behind it.
        """
        now = _now_ms()
        batch: list[tuple[int, _Pending]] = []
        for p, st in self.parts.items():
            if st.retry_at_ms > now:
                continue
            while st.heap and st.heap[0][0] <= now and len(batch) < self.options.max_batch:
                batch.append((p, heapq.heappop(st.heap)[2]))
        if not batch:
            return
        batch.sort(key=lambda pi: (pi[0], pi[1].msg.offset()))
        deliveries = [it for _, it in batch if it.due_ms is not None and it.due_ms <= now]
        if deliveries and self.cancels is not None:
            # Barrier: every cancel acked before these records' due times must be known.
            latest_due = max(it.due_ms for it in deliveries)  # type: ignore[type-var]
            if not self.cancels.ensure_synced(latest_due):
                log.warning("tier %s: cancel topic not caught up; holding deliveries", self.label)
                self._requeue(batch, now + 1000)
                return
        self._send_round(batch, now)

    def _requeue(self, items: Iterable[tuple[int, _Pending]], retry_at_ms: int) -> None:
        for p, it in items:
            st = self.parts.get(p)
            if st is not None:
                heapq.heappush(st.heap, (it.release_ms, it.msg.offset(), it))
                st.retry_at_ms = max(st.retry_at_ms, retry_at_ms)

    def _send_round(self, batch: list[tuple[int, _Pending]], now: int) -> None:
        # Decisions use `now` (what the cancel barrier covered); the delivered record's
        # timestamp and its lateness use the real send time, which is later.
        sent_at = _now_ms()
        plan: list[tuple[int, _Pending, str | None]] = []  # (partition, item, destination)
        for p, it in batch:
            if it.target is None or it.due_ms is None:
                log.warning(
                    "tier %s: dropping %s-%d@%d: no %s/%s headers",
                    self.label, self.topic, p, it.msg.offset(), h.DELAY_TARGET, h.DELAY_DUE_MS,
                )  # fmt: skip
                self.stats.count(self.label, "invalid")
                plan.append((p, it, None))
            elif self.cancels is not None and self.cancels.is_cancelled(it.message_id):
                self.stats.count(self.label, "cancelled")
                plan.append((p, it, None))
            elif it.due_ms <= now:
                plan.append((p, it, it.target))
            else:
                plan.append((p, it, self.tiers.topic_for((it.due_ms - now) / 1000)))
        sends = [(i, it, dest) for i, (_p, it, dest) in enumerate(plan) if dest is not None]
        rnd = _Round(len(sends))
        for i, it, dest in sends:
            kwargs: dict[str, Any] = {
                "headers": it.msg.headers() or [],
                "on_delivery": rnd.callback(i),
            }
            if it.msg.key() is not None:
                kwargs["key"] = it.msg.key()
            if dest == it.target:
                # The delivered record's time is its delivery time, never before it is due.
                kwargs["timestamp"] = sent_at
            self._produce(dest, it.msg.value(), kwargs)  # type: ignore[arg-type]
        while not rnd.done.is_set():
            self.producer.poll(0.05)
        self._settle(plan, rnd, sent_at)

    def _produce(self, topic: str, value: bytes | None, kwargs: dict[str, Any]) -> None:
        while True:
            try:
                self.producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let acks drain it

    def _settle(self, plan: list[tuple[int, _Pending, str | None]], rnd: _Round, now: int) -> None:
        """Mark what went out, commit up to the first record not yet forwarded."""
        lateness: list[int] = []
        cascaded = 0
        failed: list[tuple[int, _Pending]] = []
        errors: dict[int, KafkaError] = {}
        for i, (p, it, dest) in enumerate(plan):
            err = rnd.errors.get(i)
            if err is not None:
                failed.append((p, it))
                errors[p] = err
                continue
            it.done = True
            if dest is not None and dest == it.target:
                lateness.append(now - it.due_ms)  # type: ignore[operator]
            elif dest is not None:
                cascaded += 1
        for p, err in errors.items():
            st = self.parts.get(p)
            failures = 1 if st is None else st.failures + 1
            if st is not None:
                st.failures = failures
            backoff = min(30.0, 0.2 * 2 ** min(failures, 10))
            self._requeue([f for f in failed if f[0] == p], _now_ms() + int(backoff * 1000))
            log.warning(
                "tier %s: forwarding from partition %d failed (%s); retrying in %.1fs",
                self.label, p, err.str(), backoff,
            )  # fmt: skip
        if lateness:
            self.stats.delivered(self.label, lateness)
        if cascaded:
            self.stats.count(self.label, "cascaded", cascaded)
        offsets = []
        for p in {p for p, _it, _d in plan}:
            st = self.parts.get(p)
            if st is None:
                continue  # revoked meanwhile
            if p not in errors:
                st.failures = 0
            last = None
            while st.buffer and st.buffer[0].done:
                last = st.buffer.popleft().msg.offset()
            if last is not None:
                offsets.append(TopicPartition(self.topic, p, last + 1))
                self._committed[p] = last + 1
        if offsets:
            try:
                # Asynchronous: the records are already safe in their destination; a lost
                # commit only means a duplicate (same message id) after a crash.
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning("tier %s: commit failed: %s", self.label, exc)

    def _pause_or_resume(self) -> None:
        for p, st in self.parts.items():
            tp = TopicPartition(self.topic, p)
            # The smallest tier also holds records with less than one tier left; one may
            # arrive due before the head, so that tier keeps fetching (up to max_buffer
            # records). In every other tier release times follow arrival order: once the
            # head is not due, nothing behind it is, and the partition is paused.
            hold = len(st.buffer) >= self.options.max_buffer if self.smallest else bool(st.buffer)
            if hold and not st.paused:
                self.consumer.pause([tp])
                st.paused = True
            elif not hold and st.paused:
                # Fetch again right after the last record we took: anything librdkafka had
                # prefetched before the pause may have been dropped.
                self.consumer.resume([tp])
                st.paused = False
                try:
                    self.consumer.seek(TopicPartition(self.topic, p, st.last_seen + 1))
                except KafkaException as exc:
                    log.debug("tier %s: seek after resume: %s", self.label, exc)


# --------------------------------------------------------------------------- all tiers


class DelayForwarders:
    """Every tier's forwarder plus the shared producer, cancel view and stats publisher.

    ``run(stop)`` blocks until ``stop`` is set, then commits, leaves the group and returns.
    This is the ``delay-forwarders`` worker job.
    """

    def __init__(self, settings: ClientSettings | str, options: ForwarderOptions | None = None):
        self.settings = ClientSettings.of(settings)
        self.options = options or ForwarderOptions()
        self.stats = LatenessStats()
        self.instance = self.options.instance_id or default_instance()
        self.forwarders: list[TierForwarder] = []
        self.cancels: CancelView | None = None
        self.ready = threading.Event()
        self._failed: list[str] = []

    def run(self, stop: threading.Event) -> None:
        opts = self.options
        if opts.create_topics:
            _retry_transient(stop)(ensure_tier_topics)(
                self.settings, opts.tiers, opts.partitions,
                cancel_topic=opts.cancel_topic, stats_topic=opts.stats_topic,
            )  # fmt: skip
        producer = Producer(
            self.settings.producer_config(
                ErrorWatch(self.settings.bootstrap),
                **{"enable.idempotence": True, "linger.ms": 2, "delivery.timeout.ms": 120000},
            )
        )
        if opts.cancel_topic:
            self.cancels = CancelView(self.settings, opts.cancel_topic)
            _retry_transient(stop)(self.cancels.start)()
        inner = threading.Event()
        self._failed: list[str] = []
        threads = []
        try:
            self.forwarders = [
                TierForwarder(self.settings, opts, s, producer, self.cancels, self.stats)
                for s in opts.tiers.seconds
            ]
            for fw in self.forwarders:
                t = threading.Thread(
                    target=self._run_one, args=(fw, inner), name=f"kops-delay-{fw.label}"
                )
                t.start()
                threads.append(t)
            self.ready.set()
            log.info(
                "delay forwarders running: tiers %s, group %s", opts.tiers.describe(), opts.group
            )
            next_stats = time.monotonic() + opts.stats_interval
            while not stop.wait(0.2) and not self._failed:
                if opts.stats_topic and opts.stats_interval > 0 and time.monotonic() >= next_stats:
                    self.publish_stats(producer)
                    next_stats = time.monotonic() + opts.stats_interval
        finally:
            inner.set()
            for t in threads:
                t.join(30)
            if opts.stats_topic and opts.stats_interval > 0:
                self.publish_stats(producer)
            producer.flush(10)
            if self.cancels is not None:
                self.cancels.close()
            log.info("delay forwarders stopped")
        if self._failed:
            # Raised to the worker, which builds the job again after a backoff.
            raise RuntimeError(f"tier forwarder failed: {self._failed[0]}")

    def wait_assigned(self, timeout: float = 30.0) -> bool:
        """Wait until every tier forwarder has joined the group and got its partitions."""
        deadline = time.monotonic() + timeout
        if not self.ready.wait(timeout):
            return False
        return all(
            fw.assigned.wait(max(0.0, deadline - time.monotonic())) for fw in self.forwarders
        )

    def _run_one(self, fw: TierForwarder, inner: threading.Event) -> None:
        try:
            fw.run(inner)
        except Exception as exc:
            log.exception("tier %s forwarder failed; stopping every tier", fw.label)
            self._failed.append(f"tier {fw.label}: {type(exc).__name__}: {exc}")

    def publish_stats(self, producer: Producer) -> None:
        """One stats record per tier to the stats topic (key: group|instance|tier)."""
        if not self.options.stats_topic:
            return
        now = _now_ms()
        for tier, snap in self.stats.snapshot().items():
            value = {
                "group": self.options.group,
                "instance": self.instance,
                "tier": tier,
                "at_ms": now,
                **{k: v for k, v in snap.items() if k != "samples"},
                "lateness_ms": snap["samples"][-SAMPLES_PUBLISHED:],
            }
            key = f"{self.options.group}|{self.instance}|{tier}"
            try:
                producer.produce(
                    self.options.stats_topic, json.dumps(value).encode(), key=key.encode()
                )
            except (BufferError, KafkaException) as exc:
                log.warning("stats: %s", exc)
        producer.poll(0)
