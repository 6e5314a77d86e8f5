"""One tier's forwarder: a consumer in the forwarders' group that moves each released record
on (see :mod:`kops.recipes.delay.forwarder` for the design), and the options of all tiers.
"""

from __future__ import annotations

import heapq
import logging
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

from kops.client import ClientSettings, ErrorWatch, close_consumer
from kops.produce import produce_with_room
from kops.recipes import headers as h
from kops.recipes.delay.cancel import CancelView
from kops.recipes.delay.delivery import (
    Round,
    TargetCache,
    delay_dead_letter_headers,
    delivery_exception,
    is_permanent,
    unknown_topic_error,
)
from kops.recipes.delay.status import LatenessStats
from kops.recipes.delay.tiers import (
    CANCEL_TOPIC,
    DLQ_TOPIC,
    FORWARDER_GROUP,
    STATS_TOPIC,
    DelayTiers,
    format_tier,
)
from kops.recipes.exactly_once import (
    DEFAULT_TRANSACTION_TIMEOUT_MS,
    TransactionalSender,
    read_committed,
)
from kops.recipes.metrics import DLQ_DEAD_LETTERED, cause_of

__all__ = ["ForwarderOptions", "TierForwarder"]

log = logging.getLogger("kops.delay")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ForwarderOptions:
    """How the forwarders run. Only ``tiers`` is required."""

    tiers: DelayTiers = field(default_factory=DelayTiers.parse)
    group: str = FORWARDER_GROUP
    cancel_topic: str | None = CANCEL_TOPIC
    stats_topic: str | None = STATS_TOPIC
    #: Where records go that their target cannot take (missing topic, too large, not
    #: authorised); None: such records are retried with a backoff instead (their tier stalls).
    dlq_topic: str | None = DLQ_TOPIC
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
    #: Forward and commit each round in one transaction (read_committed tiers): a crash or
    #: an outage never forwards a record twice. A tier partition is then forwarded in offset
    #: order, so in the smallest tier a record with less than a tier left can wait behind
    #: the head, by less than that tier (never early).
    exactly_once: bool = False
    #: ``transaction.timeout.ms`` of each tier's transactional producer.
    transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS


@dataclass
class _Pending:
    msg: Message
    release_ms: int
    due_ms: int | None
    message_id: str | None
    target: str | None
    done: bool = False
    #: Set when the target refused the record for good: it goes to the dead-letter topic.
    dead: BaseException | None = None
    first_failure_ms: int = 0


@dataclass
class _PartState:
    # Fetched records not yet committed past, in offset order; `heap` orders the ones not
    # yet forwarded by release time.
    buffer: deque[_Pending] = field(default_factory=deque)
    heap: list[tuple[int, int, _Pending]] = field(default_factory=list)
    last_seen: int = -1
    skip_below: int = -1
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
        targets: TargetCache | None = None,
        txn_producer: Producer | None = None,
    ):
        self.settings = settings
        self.options = options
        self.tiers = options.tiers
        self.tier_ms = round(tier_seconds * 1000)
        self.label = format_tier(tier_seconds)
        self.topic = self.tiers.topic(tier_seconds)
        self.smallest = tier_seconds == self.tiers.seconds[0]
        # With exactly_once the tier's records go out on its own transactional producer;
        # the shared one still answers metadata (the target cache).
        self.producer = txn_producer or producer
        self.cancels = cancels
        self.stats = stats
        self.targets = targets or TargetCache(producer)
        self.txn: TransactionalSender | None = None
        self.parts: dict[int, _PartState] = {}
        self._committed: dict[int, int] = {}  # partition -> offset last committed
        # partition -> offset after the records this process forwarded (a contiguous prefix).
        # Kept across revokes: when a partition comes back, commits lost meanwhile (broker
        # away, revoke during an outage) do not make us forward those records again.
        self._forwarded: dict[int, int] = {}
        self._stop: threading.Event | None = None
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
        watch = ErrorWatch(settings.bootstrap, log=log, what=f"tier {self.label}")
        config = settings.consumer_config(options.group, watch, **extra)
        self.consumer = Consumer(read_committed(config) if txn_producer else config)
        if txn_producer is not None:
            self.txn = TransactionalSender(txn_producer, self.consumer, what=f"tier {self.label}")

    # -- group membership

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            # Records below what this process already forwarded (its commit may have been
            # lost: broker away, revoke during an outage) are skipped, not sent again.
            self.parts[tp.partition] = _PartState(skip_below=self._forwarded.get(tp.partition, -1))
        # Start at the group's committed offsets...
        consumer.assign(partitions)
        # ... and fetch: librdkafka keeps a partition's paused flag across revoke and assign,
        # so a partition paused while waiting for its head, revoked and given back, would
        # otherwise never be fetched again.
        consumer.resume(partitions)
        self.assigned.set()
        log.debug(
            "tier %s: assigned partitions %s", self.label, [tp.partition for tp in partitions]
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Everything forwarded up to the first unforwarded record has been committed (async,
        # after each round); commit it once more synchronously so the next owner starts
        # there. Records forwarded past it are forwarded again, with the same message id.
        self._commit_sync([tp.partition for tp in partitions])
        for tp in partitions:
            self.parts.pop(tp.partition, None)
            self._committed.pop(tp.partition, None)
        log.debug("tier %s: revoked partitions %s", self.label, [tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # no longer ours: committing would be refused
            self.parts.pop(tp.partition, None)
            self._committed.pop(tp.partition, None)
        log.warning("tier %s: lost partitions %s", self.label, [tp.partition for tp in partitions])

    def _commit_sync(self, partitions: Iterable[int]) -> None:
        if self.txn is not None:
            return  # every round committed its offsets in its transaction
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

    def positions(self) -> dict[int, int]:
        """Partition -> offset of the first record this process has not forwarded yet, for
        the partitions it holds (where it knows one): the forwarder's position for the
        parked-records gauge. Read from another thread, so it copies what it walks."""
        out: dict[int, int] = {}
        committed = dict(self._committed)
        for p, st in list(self.parts.items()):
            if p in committed:
                out[p] = committed[p]
            elif st.buffer:
                out[p] = st.buffer[0].msg.offset()
            elif st.last_seen >= 0:
                out[p] = st.last_seen + 1
        return out

    # -- main loop

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        if self.txn is not None:
            self.txn.stop = stop
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
            if self.txn is not None:
                self.txn.close()
            try:
                close_consumer(self.consumer)  # leaves the group at once: peers take over
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
            if m.offset() < st.skip_below:
                continue  # forwarded by this process before the partition was revoked
            item = self._pending(m)
            if self.txn is not None and st.buffer:
                # One committed offset per partition: with transactions nothing may leave
                # ahead of a record still waiting, or a crash would send it again.
                item.release_ms = max(item.release_ms, st.buffer[-1].release_ms)
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
        plan = [(p, it, self._destination(p, it, now)) for p, it in batch]
        sends = [(i, it, dest) for i, (_p, it, dest) in enumerate(plan) if dest is not None]
        rnd = Round(len(sends))
        if self.txn is not None:
            self.txn.begin()
        for i, it, dest in sends:
            kwargs: dict[str, Any] = {"on_delivery": rnd.callback(i)}
            if it.msg.key() is not None:
                kwargs["key"] = it.msg.key()
            if dest == self.options.dlq_topic and it.dead is not None:
                kwargs["headers"] = delay_dead_letter_headers(
                    it.msg, it.dead, target=it.target or "", group=self.options.group,
                    first_failure_ms=it.first_failure_ms,
                )  # fmt: skip
            else:
                kwargs["headers"] = it.msg.headers() or []
            if dest == it.target:
                # The delivered record's time is its delivery time, never before it is due.
                kwargs["timestamp"] = sent_at
            produce_with_room(self.producer, dest, it.msg.value(), poll_timeout=0.05, **kwargs)
        self._wait_round(rnd)
        if self.txn is not None and not self._commit_transaction(plan, rnd, sent_at):
            return
        self._settle(plan, rnd, sent_at)

    def _commit_transaction(
        self, plan: list[tuple[int, _Pending, str | None]], rnd: Round, now: int
    ) -> bool:
        """Commit the round's transaction with the offsets it advances; False: aborted, and
        every record of the round is back in its queue (nothing of it is visible)."""
        assert self.txn is not None
        complete = not rnd.errors and len(rnd.acked) == rnd.total
        if complete and self.txn.commit(self._offsets_after(plan)):
            return True
        if not complete:  # (a failed commit has aborted already)
            self.txn.abort()
        again: list[tuple[int, _Pending]] = []
        for i, (p, it, dest) in enumerate(plan):
            if dest is None:
                it.done = True  # nothing to send (invalid, cancelled): committed next round
                continue
            err = rnd.errors.get(i)
            if err is not None and is_permanent(err) and it.dead is None and self.options.dlq_topic:
                it.dead = delivery_exception(err, dest)
                it.first_failure_ms = now
                self.targets.forget(dest)
            again.append((p, it))
        transient = any(not is_permanent(e) for e in rnd.errors.values()) or complete
        self._requeue(again, _now_ms() + 500 if transient else 0)
        return False

    def _offsets_after(self, plan: list[tuple[int, _Pending, str | None]]) -> list[TopicPartition]:
        """The partitions' next offsets once every record of ``plan`` is done."""
        in_round = {id(it) for _p, it, _d in plan}
        offsets = []
        for p in {p for p, _it, _d in plan}:
            st = self.parts.get(p)
            if st is None:
                continue
            last = None
            for item in st.buffer:
                if not (item.done or id(item) in in_round):
                    break
                last = item.msg.offset()
            if last is not None:
                offsets.append(TopicPartition(self.topic, p, last + 1))
        return offsets

    def _destination(self, p: int, it: _Pending, now: int) -> str | None:
        """Where a released record goes now; None: nowhere (invalid or cancelled)."""
        if it.target is None or it.due_ms is None:
            log.warning(
                "tier %s: dropping %s-%d@%d: no %s/%s headers",
                self.label, self.topic, p, it.msg.offset(), h.DELAY_TARGET, h.DELAY_DUE_MS,
            )  # fmt: skip
            self.stats.count(self.label, "invalid")
            return None
        if self.cancels is not None and self.cancels.is_cancelled(it.message_id):
            self.stats.count(self.label, "cancelled")
            return None
        if it.dead is None and it.due_ms <= now and self.targets.exists(it.target) is False:
            it.dead = unknown_topic_error(it.target)
            it.first_failure_ms = now
        if it.dead is not None and self.options.dlq_topic:
            return self.options.dlq_topic
        if it.due_ms <= now:
            return it.target
        return self.tiers.topic_for((it.due_ms - now) / 1000)

    def _wait_round(self, rnd: Round) -> None:
        """Serve acks until the round is complete. With the broker away this waits up to
        the producer's delivery timeout; on stop it gives up after a few seconds (the
        records not acked are not committed, so nothing is lost)."""
        stopping_since: float | None = None
        while not rnd.done.is_set():
            self.producer.poll(0.05)
            if self._stop is not None and self._stop.is_set():
                stopping_since = stopping_since or time.monotonic()
                if time.monotonic() - stopping_since > 5:
                    return

    def _settle(self, plan: list[tuple[int, _Pending, str | None]], rnd: Round, now: int) -> None:
        """Mark what went out, commit up to the first record not yet forwarded."""
        lateness: list[int] = []
        cascaded = dead = 0
        failed: list[tuple[int, _Pending]] = []
        errors: dict[int, KafkaError] = {}
        again: list[tuple[int, _Pending]] = []  # refused for good: to the DLQ at once
        for i, (p, it, dest) in enumerate(plan):  # callbacks are indexed by plan position
            err = rnd.errors.get(i)
            acked = dest is None or i in rnd.acked
            if not acked and err is None:
                failed.append((p, it))  # stopping: not acked yet, not committed
                continue
            if err is not None:
                if is_permanent(err) and it.dead is None and self.options.dlq_topic:
                    it.dead = delivery_exception(err, dest or "")
                    it.first_failure_ms = now
                    self.targets.forget(dest or "")
                    log.warning(
                        "tier %s: %s-%d@%d cannot go to %s (%s); sending it to %s",
                        self.label, self.topic, p, it.msg.offset(), dest, err.str(),
                        self.options.dlq_topic,
                    )  # fmt: skip
                    again.append((p, it))
                else:
                    failed.append((p, it))
                    errors[p] = err
                continue
            it.done = True
            if dest is None:
                continue
            if it.dead is not None and dest == self.options.dlq_topic:
                dead += 1
                # Rare: a label lookup per dead letter is fine.
                DLQ_DEAD_LETTERED.labels(topic=it.target or "", cause=cause_of(it.dead)).inc()
                log.warning(
                    "tier %s: dead-lettered %s-%d@%d (message id %s, target %s) to %s: %s",
                    self.label, self.topic, p, it.msg.offset(), it.message_id, it.target,
                    dest, it.dead,
                )  # fmt: skip
            elif dest == it.target:
                lateness.append(now - it.due_ms)  # type: ignore[operator]
            else:
                cascaded += 1
        if again:
            self._requeue(again, 0)
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
        if dead:
            self.stats.count(self.label, "dead_lettered", dead)
        self._commit_done({p for p, _it, _d in plan}, errors)

    def _commit_done(self, partitions: set[int], errors: dict[int, KafkaError]) -> None:
        offsets = []
        for p in partitions:
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
                self._forwarded[p] = last + 1
        if offsets and self.txn is None:
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
