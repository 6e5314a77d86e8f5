"""Keyed parallel processing: one consumer, N worker threads, per-key order, safe commits.

A partition is Kafka's unit of order, so one consumer normally handles one record at a time
per partition. When the handler is slow (a few ms of I/O per record) that caps a consumer at a
few hundred records per second however many cores it has. Here records are spread over N
worker threads by key (one in-memory queue per worker, the seed's design): records with the
same key go to the same worker and run in order; different keys run in parallel.

Committing is the subtle part. Records finish out of order, so the helper tracks, per
partition, every offset handed out and commits only the *contiguous watermark*: the lowest
offset not yet done. A crash then redelivers everything that was in flight (and possibly some
that was done), never skips one. Pair the handler with :class:`kops.recipes.idempotent.
Idempotent` to make those redeliveries harmless::

    from confluent_kafka import Consumer
    from kops.client import ClientSettings
    from kops.recipes.idempotent import Idempotent
    from kops.recipes.parallel import ParallelConsumer

    once = Idempotent("dedup.db", namespace="emails")
    consumer = Consumer(ClientSettings("127.0.0.1:9092").consumer_config("emails"))
    pc = ParallelConsumer(consumer, once(send_email), workers=16)
    pc.subscribe(["signups"])
    pc.run()                         # until stop() / Ctrl-C; run(idle_timeout=5) for batches

The handler is any ``callable(record)``: wrap it with the idempotent helper, the DLQ wrapper,
or both. By default a handler exception stops the consumer (after committing what is safe:
the watermark stays below the failed record, so it is redelivered); pass ``on_error`` to
decide instead (log it, dead-letter it) and carry on.

:class:`KeyedExecutor` is the consumer-independent core (workers plus offset tracking), for
kafka-python or aiokafka loops: ``submit(record)``, then commit :meth:`KeyedExecutor.positions`.

Ordering modes: ``"key"`` (default; records without a key keep their partition's order),
``"partition"`` (one partition's records never run concurrently), ``"unordered"``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kops.client import IdleClock, translate_error
from kops.recipes.idempotent.records import as_record

__all__ = [
    "KeyedExecutor",
    "OffsetTracker",
    "Ordering",
    "ParallelConsumer",
    "ParallelStats",
]

log = logging.getLogger(__name__)

Ordering = Literal["key", "partition", "unordered"]
Handler = Callable[[Any], Any]
ErrorHandler = Callable[[Any, BaseException], None]
TP = tuple[str, int]


class OffsetTracker:
    """Offsets of one partition handed out in order; the commit position is the lowest not done.

    Offsets need not be contiguous (compaction and transaction markers leave gaps): only the
    offsets actually handed out count. Not thread-safe; :class:`KeyedExecutor` locks around it.
    """

    def __init__(self) -> None:
        self._pending: OrderedDict[int, bool] = OrderedDict()
        self._position: int | None = None  # next offset to commit
        self._last: int | None = None

    def add(self, offset: int) -> bool:
        """Track ``offset``; False (ignored) if it is not past the last one handed out."""
        if self._last is not None and offset <= self._last:
            return False
        self._last = offset
        if not self._pending:
            # Everything before this offset is done (or was never ours to do).
            self._position = offset
        self._pending[offset] = False
        return True

    def done(self, offset: int) -> None:
        if offset not in self._pending:
            return
        self._pending[offset] = True
        while self._pending:
            first, finished = next(iter(self._pending.items()))
            if not finished:
                self._position = first
                return
            self._pending.popitem(last=False)
            self._position = first + 1

    @property
    def position(self) -> int | None:
        """The offset to commit (every offset handed out below it is done), or None."""
        return self._position

    @property
    def in_flight(self) -> int:
        return len(self._pending)


@dataclass
class ParallelStats:
    submitted: int = 0
    processed: int = 0
    failed: int = 0
    commits: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "submitted": self.submitted,
            "processed": self.processed,
            "failed": self.failed,
            "commits": self.commits,
            "elapsed_s": round(self.elapsed, 3),
            "records_per_s": round(self.rate, 1),
        }


_STOP = object()


def _spread(data: bytes) -> int:
    # Not CRC32 (librdkafka's default partitioner) nor murmur2 (Java's): with those, every key
    # of one partition would land on the same worker, since key-hash % partitions already
    # fixed the hash's low bits.
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class KeyedExecutor:
    """N worker threads with one queue each; a record's key picks its worker.

    ``submit`` records in the order the consumer returned them; ``positions()`` gives the
    offsets safe to commit. After a handler error with no ``on_error``, :attr:`failure` is set
    and workers stop running handlers (the failed record and everything queued behind it stay
    uncommitted).
    """

    def __init__(
        self,
        handler: Handler,
        workers: int = 8,
        *,
        ordering: Ordering = "key",
        on_error: ErrorHandler | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if ordering not in ("key", "partition", "unordered"):
            raise ValueError(f"unknown ordering {ordering!r}")
        self.handler = handler
        self.workers = workers
        self.ordering = ordering
        self.on_error = on_error
        self.stats = ParallelStats()
        self.failure: BaseException | None = None
        self._trackers: dict[TP, OffsetTracker] = {}
        self._lock = threading.Condition()
        self._round_robin = itertools.count()
        self._queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(workers)]
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"kops-worker-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()

    # -- submitting

    def _route(self, topic: str, partition: int, key: bytes | None) -> int:
        if self.workers == 1:
            return 0
        if self.ordering == "unordered":
            return next(self._round_robin) % self.workers
        if self.ordering == "key" and key is not None:
            return _spread(key) % self.workers
        return _spread(f"{topic}\0{partition}".encode()) % self.workers

    def submit(self, record: Any) -> None:
        """Queue one record (confluent-kafka Message, kafka-python/aiokafka record, Record)."""
        view = as_record(record)
        tp = (view.topic, view.partition)
        with self._lock:
            tracker = self._trackers.get(tp)
            if tracker is None:
                tracker = self._trackers[tp] = OffsetTracker()
            if not tracker.add(view.offset):
                # A redelivery of a record already handed out in this session (the client
                # re-fetched after a pause or an error): running it again would break order.
                return
            self.stats.submitted += 1
        self._queues[self._route(view.topic, view.partition, view.key)].put(
            (tp, view.offset, record)
        )

    # -- workers

    def _work(self, q: queue.SimpleQueue[Any]) -> None:
        while True:
            item = q.get()
            if item is _STOP:
                return
            tp, offset, record = item
            if self.failure is not None:
                continue  # fail-stop: leave it uncommitted, it is redelivered
            try:
                self.handler(record)
            except BaseException as exc:
                if self.on_error is None:
                    with self._lock:
                        if self.failure is None:
                            self.failure = exc
                        self.stats.failed += 1
                        self._lock.notify_all()
                    continue
                try:
                    self.on_error(record, exc)
                except BaseException as exc2:
                    with self._lock:
                        self.failure = self.failure or exc2
                        self.stats.failed += 1
                        self._lock.notify_all()
                    continue
                with self._lock:
                    self.stats.failed += 1
            with self._lock:
                tracker = self._trackers.get(tp)
                if tracker is not None:
                    tracker.done(offset)
                self.stats.processed += 1
                self._lock.notify_all()

    # -- progress

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(t.in_flight for t in self._trackers.values())

    def positions(self, partitions: Iterable[TP] | None = None) -> dict[TP, int]:
        """Commit positions (next offset to read) per partition, where known."""
        with self._lock:
            chosen = self._trackers.keys() if partitions is None else partitions
            out = {}
            for tp in chosen:
                tracker = self._trackers.get(tp)
                if tracker is not None and tracker.position is not None:
                    out[tp] = tracker.position
            return out

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait until at most ``limit`` records are in flight (or a failure, or timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(t.in_flight for t in self._trackers.values()) > limit:
                remaining = deadline - time.monotonic()
                if self.failure is not None or remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def wait_idle(
        self, partitions: Iterable[TP] | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until nothing handed out (for ``partitions``) is still running.

        Returns False on timeout or when a failure stopped the workers.
        """
        wanted = None if partitions is None else set(partitions)
        deadline = None if timeout is None else time.monotonic() + timeout

        def busy() -> bool:
            return any(
                t.in_flight for tp, t in self._trackers.items() if wanted is None or tp in wanted
            )

        with self._lock:
            while busy():
                if self.failure is not None:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining if remaining is not None else 0.5)
            return True

    def forget(self, partitions: Iterable[TP]) -> None:
        """Drop tracking for partitions no longer ours (after a revoke)."""
        with self._lock:
            for tp in partitions:
                self._trackers.pop(tp, None)

    def close(self, wait: bool = True) -> None:
        for q in self._queues:
            q.put(_STOP)
        if wait:
            for t in self._threads:
                t.join()


class ParallelConsumer:
    """Drive a :class:`KeyedExecutor` from a confluent-kafka ``Consumer``.

    The consumer must have ``enable.auto.commit=false`` (``ClientSettings.consumer_config``
    sets it): commits happen here, at most every ``commit_interval`` seconds and on revoke.
    ``max_in_flight`` bounds records polled but not done; past it polling stops until half of
    them finish, and if that takes longer than ``max_poll_gap`` seconds the assignment is
    paused and polled, so rebalances are still served promptly. ``before_commit`` runs before
    every commit: pass the DLQ wrapper's ``flush`` so dead letters are acknowledged first::

        retrying = kops.recipes.retry.wrap(handle, producer, group="billing")
        ParallelConsumer(consumer, retrying, workers=8, before_commit=retrying.flush)
    """

    def __init__(
        self,
        consumer: Consumer,
        handler: Handler,
        *,
        workers: int = 8,
        ordering: Ordering = "key",
        on_error: ErrorHandler | None = None,
        max_in_flight: int = 2000,
        commit_interval: float = 1.0,
        revoke_timeout: float = 30.0,
        max_poll_gap: float = 1.0,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.executor = KeyedExecutor(handler, workers, ordering=ordering, on_error=on_error)
        self.max_in_flight = max_in_flight
        self.commit_interval = commit_interval
        self.revoke_timeout = revoke_timeout
        self.max_poll_gap = max_poll_gap
        self.before_commit = before_commit
        self._committed: dict[TP, int] = {}
        self._paused = False
        self._applied: tuple[bool, frozenset[TP]] | None = None
        self._stop = threading.Event()

    @property
    def stats(self) -> ParallelStats:
        return self.executor.stats

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe with the rebalance callbacks that finish and commit revoked partitions."""
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def stop(self) -> None:
        """Ask :meth:`run` to finish in-flight records, commit and return (thread-safe)."""
        self._stop.set()

    # -- rebalance callbacks (run inside consume(), on the polling thread)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The loop applies the pause state to the new assignment on its next turn.
        self._applied = None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        # Finish what was handed out for these partitions, so the next owner starts right
        # after it; past the timeout it gets the unfinished records again.
        if not self.executor.wait_idle(tps, self.revoke_timeout):
            log.warning("revoke: records of %s still running; they will be redelivered", tps)
        self._commit(tps)
        self.executor.forget(tps)
        for tp in tps:
            self._committed.pop(tp, None)
        # librdkafka keeps a partition's pause flag across rebalances: clear it, or the
        # partition would stay silent when it is assigned to us again.
        consumer.resume(partitions)
        self._applied = None

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Already someone else's: committing would fail or rewind them.
        tps = [(p.topic, p.partition) for p in partitions]
        self.executor.wait_idle(tps, self.revoke_timeout)
        self.executor.forget(tps)
        for tp in tps:
            self._committed.pop(tp, None)
        self._applied = None

    # -- committing

    def _commit(self, partitions: Iterable[TP] | None = None) -> None:
        todo = [
            TopicPartition(t, p, off)
            for (t, p), off in self.executor.positions(partitions).items()
            if self._committed.get((t, p)) != off
        ]
        if not todo:
            return
        if self.before_commit is not None:
            # E.g. the DLQ wrapper's flush(): dead letters and retries must be acknowledged
            # before the offsets of their records are committed. If it raises, nothing is
            # committed and the records are consumed again.
            self.before_commit()
        try:
            self.consumer.commit(offsets=todo, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
                return
            raise translate_error(exc, "commit") from exc
        for tp in todo:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        self.executor.stats.commits += 1

    def _apply_pause(self) -> None:
        """Pause or resume the whole current assignment to match ``self._paused``."""
        assignment = self.consumer.assignment()
        state = (self._paused, frozenset((p.topic, p.partition) for p in assignment))
        if state == self._applied:
            return
        if assignment:
            (self.consumer.pause if self._paused else self.consumer.resume)(assignment)
        self._applied = state

    # -- the loop

    def run(
        self,
        *,
        max_records: int | None = None,
        idle_timeout: float | None = None,
        batch: int = 500,
    ) -> ParallelStats:
        """Consume, process and commit until :meth:`stop`, ``max_records`` records are done,
        or nothing arrived for ``idle_timeout`` seconds with nothing in flight.

        Raises the first handler error (when no ``on_error`` was given) after committing
        everything below it.
        """
        ex = self.executor
        started = time.monotonic()
        next_commit = started + self.commit_interval
        last_poll = started
        idle = IdleClock(idle_timeout)
        try:
            while not self._stop.is_set():
                if ex.failure is not None:
                    break
                if max_records is not None and ex.stats.processed >= max_records:
                    break
                want = batch
                if max_records is not None:
                    want = max(0, min(batch, max_records - ex.stats.submitted))
                now = time.monotonic()
                full = ex.in_flight >= self.max_in_flight
                if not want or (full and now - last_poll < self.max_poll_gap):
                    # Let the workers catch up without polling: a poll could return more
                    # records, and pausing instead makes librdkafka drop its prefetched data
                    # (costly to fetch again). Heartbeats go on in librdkafka's own thread.
                    msgs = []
                    ex.wait_below(self.max_in_flight // 2 if want else 0, timeout=0.1)
                else:
                    # Still full after max_poll_gap (slow handlers): pause, and poll anyway
                    # so rebalances are served and max.poll.interval.ms is never exceeded.
                    self._paused = full
                    self._apply_pause()
                    msgs = self.consumer.consume(want, 0.1)
                    last_poll = time.monotonic()
                now = time.monotonic()
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF or err.retriable():
                            continue
                        raise translate_error(KafkaException(err), "consume")
                    ex.submit(msg)
                if msgs:
                    idle.touch()
                if ex.in_flight == 0 and idle.expired(self.consumer):
                    break
                if now >= next_commit:
                    self._commit()
                    next_commit = now + self.commit_interval
            ex.wait_idle(timeout=self.revoke_timeout)
            self._commit()
        finally:
            ex.stats.elapsed = time.monotonic() - started
            ex.close(wait=ex.failure is None)
        if ex.failure is not None:
            raise ex.failure
        return ex.stats
