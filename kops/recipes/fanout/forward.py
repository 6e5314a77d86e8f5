"""The fan-out forwarder: :class:`BacklogFanout` and the murmur2 partitioner (see the package
docstring for the guarantees)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kops import admin
from kops.client import (
    AdminSession,
    ClientSettings,
    ErrorWatch,
    KopsClientError,
    UnknownTopic,
    fetch_metadata,
    translate_error,
)
from kops.recipes import headers as h
from kops.recipes.offsets import describe_group
from kops.recipes.parallel import OffsetTracker

__all__ = [
    "METADATA_PREFIX",
    "BacklogFanout",
    "FanoutProgress",
    "FanoutReport",
    "fanout",
    "murmur2",
    "parse_metadata",
    "partition_for_key",
]

log = logging.getLogger(__name__)

#: Commit metadata of a fan-out's source group starts with this, then JSON.
METADATA_PREFIX = "kops-fanout:"

TP = tuple[str, int]


# --------------------------------------------------------------------------- partitioning


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed 0x9747b28c), as a signed 32-bit int like Java's."""
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    length = len(data)
    h_ = (0x9747B28C ^ length) & mask
    n4 = length - length % 4
    for i in range(0, n4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h_ = ((h_ * m) & mask) ^ k
    rest = length % 4
    if rest == 3:
        h_ ^= data[n4 + 2] << 16
    if rest >= 2:
        h_ ^= data[n4 + 1] << 8
    if rest >= 1:
        h_ ^= data[n4]
        h_ = (h_ * m) & mask
    h_ ^= h_ >> 13
    h_ = (h_ * m) & mask
    h_ ^= h_ >> 15
    return h_ - (1 << 32) if h_ & 0x80000000 else h_


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FanoutProgress:
    #: Records acknowledged by the target since this run started.
    forwarded: int
    #: Backlog at assignment time (None until the first assignment).
    total: int | None
    elapsed: float
    #: Records per second over the run.
    rate: float


@dataclass
class FanoutReport:
    source: str
    group: str
    target: str
    partitions: int
    forwarded: int = 0
    #: Backlog (records) found at assignment, from the committed offsets.
    backlog: int = 0
    created_target: bool = False
    caught_up: bool = False
    elapsed: float = 0.0
    #: Source group commit positions at the end, per source partition.
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.forwarded / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "group": self.group,
            "target": self.target,
            "partitions": self.partitions,
            "forwarded": self.forwarded,
            "backlog": self.backlog,
            "created_target": self.created_target,
            "caught_up": self.caught_up,
            "elapsed_s": round(self.elapsed, 3),
            "records_per_s": round(self.rate, 1),
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
        }


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    """The fan-out settings stored in a commit's metadata, or None if it is not a fan-out's."""
    if not text or not text.startswith(METADATA_PREFIX):
        return None
    try:
        data = json.loads(text[len(METADATA_PREFIX) :])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- the forwarder


class BacklogFanout:
    """Forward ``source`` from ``group``'s committed offsets to ``target``; see the module doc.

    ``partitions``: the target's partition count; the target is created with it when missing
    (``create``), and an existing target must have exactly that many (a different count would
    move keys mid-stream). ``rate``: records per second at most. ``drain_group``: recorded in
    the commit metadata so ``kops backlog status`` can find the drain consumers' lag.
    """

    def __init__(
        self,
        settings: ClientSettings | str,
        source: str,
        group: str,
        target: str,
        partitions: int = 64,
        *,
        rate: float | None = None,
        drain_group: str | None = None,
        create: bool = True,
        replication_factor: int | None = None,
        commit_interval: float = 1.0,
        batch: int = 1000,
        partition_check_interval: float = 30.0,
    ) -> None:
        if source == target:
            raise KopsClientError("source and target topics must differ")
        if drain_group is not None and drain_group == group:
            raise KopsClientError("the drain group must differ from the source group")
        if partitions < 1:
            raise KopsClientError("partitions must be at least 1")
        if rate is not None and rate <= 0:
            raise KopsClientError("rate must be positive")
        self.settings = ClientSettings.of(settings)
        self.source = source
        self.group = group
        self.target = target
        self.partitions = partitions
        self.rate = rate
        self.drain_group = drain_group
        self.create = create
        self.replication_factor = replication_factor
        self.commit_interval = commit_interval
        self.batch = batch
        self.partition_check_interval = partition_check_interval
        self._stop = threading.Event()
        self._metadata = METADATA_PREFIX + json.dumps(
            {"to": target, "partitions": partitions, "drain_group": drain_group},
            separators=(",", ":"),
        )
        self._partition_cache: dict[bytes, int] = {}
        self._reset()

    def _reset(self) -> None:
        self._trackers: dict[TP, OffsetTracker] = {}
        self._ends: dict[TP, int] = {}
        self._starts: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._acked = 0
        self._sent = 0
        self._backlog: int | None = None
        self._failure: KafkaError | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return (thread-safe)."""
        self._stop.set()

    # -- setup

    def ensure_target(self) -> bool:
        """Check the source and group; create the target if missing (True when created) and
        check its partition count."""
        with AdminSession(self.settings) as session:
            session.metadata(self.source)  # UnknownTopic for a missing source, up front
            info = describe_group(session, self.group)
            if info.members:
                raise KopsClientError(
                    f"group {self.group!r} has {len(info.members)} active member(s): stop its "
                    "consumers first, the fan-out takes over its backlog (members that were "
                    "killed leave when their session times out)"
                )
            try:
                md = session.metadata(self.target)
            except UnknownTopic:
                md = None
        if md is None:
            if not self.create:
                raise UnknownTopic(f"unknown topic {self.target!r} (and create is off)")
            admin.create_topic(self.settings, self.target, self.partitions, self.replication_factor)
            return True
        count = len(md.topics[self.target].partitions)
        if count != self.partitions:
            raise KopsClientError(
                f"target topic {self.target!r} has {count} partitions, not {self.partitions}: "
                f"pass --partitions {count} or choose another target"
            )
        return False

    def target_partition(self, key: bytes | None, source_partition: int) -> int:
        if key is None:
            return source_partition % self.partitions
        cached = self._partition_cache.get(key)
        if cached is None:
            if len(self._partition_cache) > 100_000:  # bounded: keys may be unbounded
                self._partition_cache.clear()
            cached = self._partition_cache[key] = partition_for_key(key, self.partitions)
        return cached

    # -- assignment: no group membership, partitions assigned explicitly

    def _assign_new(self, consumer: Consumer, watch: ErrorWatch) -> None:
        """Assign source partitions not assigned yet (all at start; new ones later), each from
        the group's committed offset, else the log start."""
        md = fetch_metadata(consumer, watch, self.settings.timeout, self.source)
        new = [
            TopicPartition(self.source, p)
            for p in sorted(md.topics[self.source].partitions)
            if (self.source, p) not in self._ends
        ]
        if not new:
            return
        committed = consumer.committed(new, timeout=self.settings.timeout)
        backlog = 0
        for tp in committed:
            if tp.error is not None:
                raise translate_error(
                    KafkaException(tp.error), "fetch committed offsets", self.group
                )
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=self.settings.timeout
            )
            # A committed offset below the log start (retention deleted records) starts at
            # the log start, as auto.offset.reset=earliest would.
            start = max(tp.offset, low) if tp.offset >= 0 else low
            key = (tp.topic, tp.partition)
            self._ends[key] = high
            self._starts[key] = start
            backlog += max(high - start, 0)
            if tp.offset >= 0:
                self._committed[key] = tp.offset
            tp.offset = start
        consumer.incremental_assign(committed)
        self._backlog = (self._backlog or 0) + backlog
        log.info(
            "fan-out of %s: partitions %s, backlog %d",
            self.source,
            [p.partition for p in new],
            backlog,
        )

    # -- delivery and commits

    def _delivered(self, key: TP, offset: int, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            if self._failure is None:
                self._failure = err
            return
        tracker = self._trackers.get(key)
        if tracker is not None:
            tracker.done(offset)
        self._acked += 1

    def _flush(self, producer: Producer, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(producer) and time.monotonic() < deadline:
            producer.flush(0.5)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise translate_error(KafkaException(self._failure), "forward", self.target)

    def _positions(self, consumer: Consumer, keys: list[TP]) -> dict[TP, int]:
        """Offsets safe to commit: below them, every record's forward is acknowledged."""
        out: dict[TP, int] = {}
        idle = [k for k in keys if (t := self._trackers.get(k)) is None or t.in_flight == 0]
        fetched = {}
        if idle:
            # With nothing in flight, the consumer's own position also skips offsets that hold
            # no record for us (transaction markers, compacted gaps at the end).
            for tp in consumer.position([TopicPartition(t, p) for t, p in idle]):
                if tp.offset >= 0:
                    fetched[(tp.topic, tp.partition)] = tp.offset
        for key in keys:
            tracker = self._trackers.get(key)
            pos = tracker.position if tracker is not None else None
            if key in fetched:
                pos = max(pos or 0, fetched[key])
            if pos is not None:
                out[key] = pos
        return out

    def _commit(self, consumer: Consumer, keys: list[TP] | None = None) -> None:
        keys = list(self._ends) if keys is None else keys
        todo = [
            TopicPartition(t, p, off, self._metadata)
            for (t, p), off in self._positions(consumer, keys).items()
            if self._committed.get((t, p)) != off
        ]
        if not todo:
            return
        try:
            consumer.commit(offsets=todo, asynchronous=False)
        except KafkaException as exc:
            raise translate_error(exc, "commit", self.group) from exc
        for tp in todo:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def _caught_up(self) -> bool:
        if not self._ends:
            return False
        for key, end in self._ends.items():
            tracker = self._trackers.get(key)
            if tracker is not None and tracker.in_flight:
                return False
            # Nothing committed and nothing to read (an empty partition) counts as caught up.
            if self._committed.get(key, self._starts.get(key, -1)) < end:
                return False
        return True

    # -- the loop

    def run(
        self,
        *,
        until_caught_up: bool = False,
        progress: Callable[[FanoutProgress], None] | None = None,
        progress_interval: float = 0.25,
    ) -> FanoutReport:
        """Forward until :meth:`stop` (or, with ``until_caught_up``, until the backlog found
        at assignment is forwarded and committed). Always flushes and commits before returning.
        """
        self._reset()
        report = FanoutReport(self.source, self.group, self.target, self.partitions)
        report.created_target = self.ensure_target()
        watch = ErrorWatch(self.settings.bootstrap)
        producer = Producer(
            self.settings.producer_config(
                watch,
                **{
                    "enable.idempotence": True,
                    "linger.ms": 20,
                    "compression.type": "lz4",
                    "queue.buffering.max.messages": 200_000,
                },
            )
        )
        consumer = Consumer(self.settings.consumer_config(self.group, watch))
        started = time.monotonic()
        next_commit = started + self.commit_interval
        next_progress = started
        next_partition_check = started + self.partition_check_interval
        try:
            self._assign_new(consumer, watch)
            while not self._stop.is_set():
                msgs = consumer.consume(self.batch if self.rate is None else 100, 0.1)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF or err.retriable():
                            continue
                        raise translate_error(KafkaException(err), "consume", self.source)
                    self._pace(producer, started)
                    self._forward(producer, msg)
                producer.poll(0)
                self._raise_failure()
                now = time.monotonic()
                if progress is not None and now >= next_progress:
                    progress(self._progress(started))
                    next_progress = now + progress_interval
                if not until_caught_up and now >= next_partition_check:
                    self._assign_new(consumer, watch)  # partitions added to the source
                    next_partition_check = now + self.partition_check_interval
                if now >= next_commit or (until_caught_up and not msgs):
                    self._commit(consumer)
                    next_commit = now + self.commit_interval
                    if until_caught_up and self._caught_up():
                        report.caught_up = True
                        break
            self._flush(producer)
            self._commit(consumer)
            report.caught_up = report.caught_up or self._caught_up()
        finally:
            report.forwarded = self._acked
            report.backlog = self._backlog or 0
            report.elapsed = time.monotonic() - started
            report.committed = {p: o for (_, p), o in self._committed.items()}
            if progress is not None:
                progress(self._progress(started))
            # Undelivered records are not committed: a restart forwards them again.
            producer.flush(5)
            consumer.close()
        return report

    def _forward(self, producer: Producer, msg: Any) -> None:
        key = (msg.topic(), msg.partition())
        offset = msg.offset()
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = OffsetTracker()
        if not tracker.add(offset):
            return  # already forwarded in this session (a re-fetch)
        headers = list(msg.headers() or ())
        if h.get(headers, h.MESSAGE_ID) is None:
            headers.append((h.MESSAGE_ID, f"{key[0]}/{key[1]}/{offset}".encode()))
        ts_type, ts = msg.timestamp()
        kwargs: dict[str, Any] = {
            "key": msg.key(),
            "value": msg.value(),
            "headers": headers,
            "partition": self.target_partition(msg.key(), key[1]),
            "on_delivery": lambda err, m, k=key, o=offset: self._delivered(k, o, err, m),
        }
        if ts_type and ts >= 0:
            kwargs["timestamp"] = ts  # keep the original time (lag-in-seconds stays true)
        while True:
            try:
                producer.produce(self.target, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain it
                self._raise_failure()
        self._sent += 1

    def _pace(self, producer: Producer, started: float) -> None:
        if self.rate is None:
            return
        # The n-th record may leave at started + n / rate; wait in short slices so
        # delivery callbacks keep running.
        while True:
            wait = started + self._sent / self.rate - time.monotonic()
            if wait <= 0 or self._stop.is_set():
                return
            producer.poll(min(wait, 0.05))

    def _progress(self, started: float) -> FanoutProgress:
        elapsed = time.monotonic() - started
        return FanoutProgress(
            forwarded=self._acked,
            total=self._backlog,
            elapsed=elapsed,
            rate=self._acked / elapsed if elapsed > 0 else 0.0,
        )


def fanout(
    settings: ClientSettings | str,
    source: str,
    group: str,
    target: str,
    partitions: int = 64,
    *,
    until_caught_up: bool = True,
    progress: Callable[[FanoutProgress], None] | None = None,
    **options: Any,
) -> FanoutReport:
    """One call: :class:`BacklogFanout` (``options`` go to it) run until caught up."""
    job = BacklogFanout(settings, source, group, target, partitions, **options)
    return job.run(until_caught_up=until_caught_up, progress=progress)


def print_record(record: Any) -> None:
    """A placeholder drain handler: one line per record on stdout. Replace it with yours."""
    key = record.key()
    print(
        f"{record.topic()}[{record.partition()}]@{record.offset()} "
        f"key={key.decode('utf-8', 'replace') if key is not None else None}",
        flush=True,
    )
