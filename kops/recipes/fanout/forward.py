"""The fan-out forwarder, :class:`BacklogFanout` (see the package docstring for the
guarantees); with ``exactly_once`` its rounds are transactions (:mod:`.transactional`)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kops import admin
from kops.admin import offsets_for_time, watermarks
from kops.client import (
    AdminSession,
    BrokerUnavailable,
    ClientSettings,
    ErrorWatch,
    KopsClientError,
    UnknownTopic,
    fetch_metadata,
    translate_error,
)
from kops.produce import produce_with_room
from kops.recipes import headers as h
from kops.recipes.exactly_once import read_committed
from kops.recipes.fanout.partitioner import murmur2, partition_for_key
from kops.recipes.fanout.report import (
    METADATA_PREFIX,
    FanoutProgress,
    FanoutReport,
    parse_metadata,
)
from kops.recipes.fanout.transactional import FanoutTransactions
from kops.recipes.metrics import FANOUT_ETA, FANOUT_FORWARDED, FANOUT_REMAINING
from kops.recipes.offsets import committed_offsets, describe_group
from kops.recipes.pacing import Pacer
from kops.recipes.parallel import OffsetTracker
from kops.timeparse import parse_timestamp

__all__ = [
    "METADATA_PREFIX",
    "BacklogFanout",
    "FanoutProgress",
    "FanoutReport",
    "fanout",
    "murmur2",
    "parse_metadata",
    "parse_start",
    "partition_for_key",
]

log = logging.getLogger(__name__)
TP = tuple[str, int]

#: Producer settings of the forwarding (plain or transactional): batches, not latency.
_TUNING: dict[str, Any] = {
    "linger.ms": 20,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
}

#: Where partitions without a committed offset start: "earliest", "latest" or epoch ms.
Start = str | int


def parse_start(start: Start | None) -> Start | None:
    """``"earliest"``/``"latest"`` (also ``beginning``/``end``), epoch ms, or a time as
    :func:`kops.timeparse.parse_timestamp` reads it (ISO-8601, ``2h`` ago) -> ``"earliest"``,
    ``"latest"`` or epoch ms. None stays None (resume from commits only)."""
    if start is None:
        return None
    if isinstance(start, int) and not isinstance(start, bool):
        if start < 0:
            raise KopsClientError(f"start time must not be negative, got {start}")
        return start
    text = str(start).strip().lower()
    if text in ("earliest", "beginning"):
        return "earliest"
    if text in ("latest", "end"):
        return "latest"
    try:
        return parse_timestamp(str(start))
    except ValueError as exc:
        raise KopsClientError(f"start: {exc}; or 'earliest' or 'latest'") from None


# --------------------------------------------------------------------------- the forwarder


class BacklogFanout:
    """Forward ``source`` from ``group``'s committed offsets to ``target``; see the module doc.

    ``partitions``: the target's partition count; the target is created with it when missing
    (``create``), and an existing target must have exactly that many (a different count would
    move keys mid-stream). ``rate``: records per second at most. ``drain_group``: recorded in
    the commit metadata so ``kops backlog status`` can find the drain consumers' lag.

    ``start``: where source partitions without a committed offset begin: ``"earliest"`` (the
    whole retained log), ``"latest"`` (only records produced from now on) or a time (epoch ms,
    ISO-8601, ``2h`` ago: the first record at or after it). Partitions with a committed offset
    always resume from it. Without ``start``, a group with no committed offset on the source
    is refused: the fan-out would otherwise forward the whole topic, which is rarely the
    backlog meant.

    ``exactly_once``: read the source with ``isolation.level=read_committed`` and make each
    round (``commit_interval``: what was forwarded since the last commit, and the source
    offsets it advances, commit metadata included) one transaction
    (:mod:`kops.recipes.fanout.transactional`). Target readers with read_committed then see
    every source record once, through crashes; an aborted round is read and forwarded
    again. Raises :class:`kops.recipes.exactly_once.TransactionsUnsupported` on a cluster
    without transactions.
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
        start: Start | None = None,
        drain_group: str | None = None,
        create: bool = True,
        replication_factor: int | None = None,
        commit_interval: float = 1.0,
        batch: int = 1000,
        partition_check_interval: float = 30.0,
        exactly_once: bool = False,
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
        self.start = parse_start(start)
        self.drain_group = drain_group
        self.create = create
        self.replication_factor = replication_factor
        self.commit_interval = commit_interval
        self.batch = batch
        self.partition_check_interval = partition_check_interval
        self.exactly_once = exactly_once
        self._txn: FanoutTransactions | None = None
        self._stop = threading.Event()
        self._metadata = METADATA_PREFIX + json.dumps(
            {"to": target, "partitions": partitions, "drain_group": drain_group},
            separators=(",", ":"),
        )
        self._partition_cache: dict[bytes, int] = {}
        self._forwarded_metric = FANOUT_FORWARDED.labels(source=source)
        self._reset()

    def _reset(self) -> None:
        self._trackers: dict[TP, OffsetTracker] = {}
        # Partitions sought back after an aborted round that have not handed out a record
        # since: their consumer position may still be the one before the seek (seek() is
        # asynchronous), which would commit past records about to be read again.
        self._rewound: set[TP] = set()
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
            source_md = session.metadata(self.source)  # UnknownTopic for a missing source
            self._check_no_members(session)
            try:
                md = session.metadata(self.target)
            except UnknownTopic:
                md = None
            if md is not None:
                count = len(md.topics[self.target].partitions)
                if count != self.partitions:
                    raise KopsClientError(
                        f"target topic {self.target!r} has {count} partitions, not "
                        f"{self.partitions}: pass --partitions {count} or choose another target"
                    )
            elif not self.create:
                raise UnknownTopic(f"unknown topic {self.target!r} (and create is off)")
            if self.start is None:
                self._check_committed(session, sorted(source_md.topics[self.source].partitions))
        if md is None:
            admin.create_topic(self.settings, self.target, self.partitions, self.replication_factor)
            return True
        return False

    def _check_no_members(self, session: AdminSession) -> None:
        info = describe_group(session, self.group)
        if info.members:
            raise KopsClientError(
                f"group {self.group!r} has {len(info.members)} active member(s): stop its "
                "consumers first, the fan-out takes over its backlog (members that were "
                "killed leave when their session times out)"
            )

    def check_start(self) -> None:
        """Check the source and group before :meth:`run` (which checks again): raise when
        the group has active members, or (code ``NO_COMMITTED_OFFSETS``) when no ``start``
        is given and the group has no committed offset on the source."""
        with AdminSession(self.settings) as session:
            md = session.metadata(self.source)
            self._check_no_members(session)
            if self.start is None:
                self._check_committed(session, sorted(md.topics[self.source].partitions))

    def _check_committed(self, session: AdminSession, partitions: list[int]) -> None:
        """Refuse a group with no committed offset on the source when no start is given."""
        keys = [(self.source, p) for p in partitions]
        if any(off is not None for off in committed_offsets(session, self.group, keys).values()):
            return
        starts, ends = watermarks(session, keys)
        total = sum(max(ends[k] - starts[k], 0) for k in keys)
        raise KopsClientError(
            f"group {self.group!r} has no committed offsets on {self.source!r}, so there is no "
            f"backlog to resume: give a start (earliest: the whole topic, {total} "
            f"record{'s' * (total != 1)}; latest: only new records; or a time)",
            code="NO_COMMITTED_OFFSETS",
        )

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
        # ``start`` is for the partitions found at start; one added to the source later is
        # read from its beginning (all of it is new).
        initial = not self._ends
        by_time = self._start_by_time([tp for tp in committed if tp.offset < 0]) if initial else {}
        backlog = 0
        chosen: list[TopicPartition] = []
        for tp in committed:
            if tp.error is not None:
                raise translate_error(
                    KafkaException(tp.error), "fetch committed offsets", self.group
                )
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=self.settings.timeout
            )
            key = (tp.topic, tp.partition)
            # A committed offset below the log start (retention deleted records) starts at
            # the log start, as auto.offset.reset=earliest would. Uncommitted partitions
            # start where ``start`` says (a partition added later, without one: its start).
            if tp.offset >= 0:
                start = max(tp.offset, low)
            elif initial and self.start == "latest":
                start = high
            elif key in by_time:
                found = by_time[key]
                start = high if found is None else min(max(found, low), high)
            else:
                start = low
            self._ends[key] = high
            self._starts[key] = start
            backlog += max(high - start, 0)
            if tp.offset >= 0:
                self._committed[key] = tp.offset
            elif initial and self.start is not None:
                chosen.append(TopicPartition(tp.topic, tp.partition, start, self._metadata))
            tp.offset = start
        # Commit where ``start`` put the uncommitted partitions, so a restart resumes
        # there (a "latest" fan-out restarted later must not skip what came meanwhile).
        while chosen and not self._store(consumer, chosen):
            # An aborted transaction of offsets alone: nothing to read again, just retry.
            if self._stop.wait(0.2):
                break
        consumer.incremental_assign(committed)
        self._backlog = (self._backlog or 0) + backlog
        log.debug(
            "fan-out of %s: partitions %s, backlog %d",
            self.source,
            [p.partition for p in new],
            backlog,
        )

    def _recheck_partitions(self, consumer: Consumer, watch: ErrorWatch) -> None:
        """Partitions added to the source since the last look. A broker away at that moment
        (restarting) does not stop a long-running fan-out: its clients reconnect, and the
        next check looks again."""
        try:
            self._assign_new(consumer, watch)
        except BrokerUnavailable as exc:
            watch.all_down = False  # reported by this check; the next one asks afresh
            log.warning(
                "fan-out of %s: partition check: %s (looking again later)", self.source, exc
            )

    def _start_by_time(self, uncommitted: list[TopicPartition]) -> dict[TP, int | None]:
        """For a time ``start``: the first offset at or after it per uncommitted partition."""
        if not isinstance(self.start, int) or not uncommitted:
            return {}
        with AdminSession(self.settings) as session:
            keys = [(tp.topic, tp.partition) for tp in uncommitted]
            return offsets_for_time(session, keys, self.start)

    # -- delivery and commits

    def _delivered(self, key: TP, offset: int, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            if self._failure is None:
                self._failure = err
            return
        tracker = self._trackers.get(key)
        if tracker is not None:
            tracker.done(offset)
        if self._txn is not None:
            self._txn.acked += 1  # counted once its transaction commits
            return
        self._acked += 1
        self._forwarded_metric.inc()

    def _flush(self, producer: Producer, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(producer) and time.monotonic() < deadline:
            producer.flush(0.5)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            if self._txn is not None and (fenced := self._txn.fenced(self._failure)):
                raise fenced
            raise translate_error(KafkaException(self._failure), "forward", self.target)

    def _positions(self, consumer: Consumer, keys: list[TP]) -> dict[TP, int]:
        """Offsets safe to commit: below them, every record's forward is acknowledged."""
        out: dict[TP, int] = {}
        idle = [
            k
            for k in keys
            if ((t := self._trackers.get(k)) is None or t.in_flight == 0) and k not in self._rewound
        ]
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

    def _commit(self, consumer: Consumer, producer: Producer) -> None:
        if self._txn is not None:
            # The round's offsets go with its records: every one of them acknowledged first
            # (a failed delivery raises, and the open transaction is aborted on the way out).
            self._flush(producer)
        todo = [
            TopicPartition(t, p, off, self._metadata)
            for (t, p), off in self._positions(consumer, list(self._ends)).items()
            if self._committed.get((t, p)) != off
        ]
        if (todo or self._txn is not None) and not self._store(consumer, todo):
            # Aborted: nothing of the round is visible; read it again from the last commits.
            positions = {k: self._committed.get(k, self._starts[k]) for k in self._ends}
            assert self._txn is not None
            self._txn.rewind(consumer, positions)
            for key in positions:
                self._trackers.pop(key, None)  # or the re-read records count as re-fetches
            self._rewound.update(positions)

    def _store(self, consumer: Consumer, offsets: list[TopicPartition]) -> bool:
        """Commit ``offsets`` on the group: plainly, or with the open round in its
        transaction (exactly_once). False: the transaction aborted."""
        if self._txn is not None:
            forwarded = self._txn.commit(offsets)
            if forwarded is None:
                return False
            self._acked += forwarded
            self._forwarded_metric.inc(forwarded)
        else:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                raise translate_error(exc, "commit", self.group) from exc
        self._committed.update({(tp.topic, tp.partition): tp.offset for tp in offsets})
        return True

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
        consumer, producer = self._clients(watch)
        # Delivery callbacks keep running while the pacer waits (it polls the producer).
        pacer = Pacer(self.rate, wait=producer.poll, stop=self._stop)
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
                    pacer.pace()
                    self._forward(producer, msg)
                producer.poll(0)
                self._raise_failure()
                now = time.monotonic()
                if now >= next_progress:  # the progress gauges move even with no callback
                    snapshot = self._progress(started)
                    if progress is not None:
                        progress(snapshot)
                    next_progress = now + progress_interval
                if not until_caught_up and now >= next_partition_check:
                    self._recheck_partitions(consumer, watch)
                    next_partition_check = now + self.partition_check_interval
                if now >= next_commit or (until_caught_up and not msgs):
                    self._commit(consumer, producer)
                    next_commit = now + self.commit_interval
                    if until_caught_up and self._caught_up():
                        report.caught_up = True
                        break
            self._flush(producer)
            self._commit(consumer, producer)
            report.caught_up = report.caught_up or self._caught_up()
        except KafkaException as exc:  # produce() refuses once the producer is fenced
            if self._txn is not None and (fenced := self._txn.fenced(exc)):
                raise fenced from None
            raise
        finally:
            report.forwarded = self._acked
            report.backlog = self._backlog or 0
            report.elapsed = time.monotonic() - started
            report.committed = {p: o for (_, p), o in self._committed.items()}
            snapshot = self._progress(started)
            if progress is not None:
                progress(snapshot)
            if self._txn is not None:
                self._txn.close()  # what is left open (an error) stays invisible
                self._txn = None
            else:
                # Undelivered records are not committed: a restart forwards them again.
                producer.flush(5)
            consumer.close()
        return report

    def _clients(self, watch: ErrorWatch) -> tuple[Consumer, Producer]:
        config = self.settings.consumer_config(self.group, watch)
        if not self.exactly_once:
            consumer = Consumer(config)
            return consumer, Producer(
                self.settings.producer_config(watch, **{"enable.idempotence": True, **_TUNING})
            )
        consumer = Consumer(read_committed(config))
        try:
            self._txn = FanoutTransactions(
                self.settings, self.group, self.source, consumer, watch=watch, stop=self._stop,
                **_TUNING,
            )  # fmt: skip
        except BaseException:
            consumer.close()
            raise
        return consumer, self._txn.producer

    def _forward(self, producer: Producer, msg: Any) -> None:
        key = (msg.topic(), msg.partition())
        offset = msg.offset()
        self._rewound.discard(key)
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
        if self._txn is not None:
            self._txn.ensure_open()
        # Local queue full: serve deliveries until there is room (never drops the record).
        produce_with_room(producer, self.target, on_full=self._raise_failure, **kwargs)
        self._sent += 1

    def _progress(self, started: float) -> FanoutProgress:
        """How far the run is; also sets the remaining-records and ETA gauges."""
        elapsed = time.monotonic() - started
        snapshot = FanoutProgress(
            forwarded=self._acked,
            total=self._backlog,
            elapsed=elapsed,
            rate=self._acked / elapsed if elapsed > 0 else 0.0,
        )
        if snapshot.total is not None:
            remaining = max(snapshot.total - snapshot.forwarded, 0)
            FANOUT_REMAINING.labels(source=self.source).set(remaining)
            if remaining == 0:
                FANOUT_ETA.labels(source=self.source).set(0)
            elif snapshot.rate > 0:
                FANOUT_ETA.labels(source=self.source).set(remaining / snapshot.rate)
        return snapshot


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
    line = (
        f"{record.topic()}[{record.partition()}]@{record.offset()} "
        f"key={key.decode('utf-8', 'replace') if key is not None else None}\n"
    )
    # One write per line: print() writes the text and the newline separately, so lines
    # from drain workers on several threads could run together.
    sys.stdout.write(line)
    sys.stdout.flush()
