"""``dlq replay``: re-send dead letters, rate-limited, each at most once (see
:mod:`kops.recipes.dlq` for how replay-once works).

With ``exactly_once`` a batch's replayed records and their ``done`` markers go in one
transaction (:mod:`kops.recipes.exactly_once`), and the DLQ and the markers are read with
``isolation.level=read_committed``: a run killed at any point leaves no record in doubt,
and the next run replays exactly what the killed one did not commit. The transactional id
is the DLQ's (``kops.dlq-replay.<dlq>``): a new run aborts what a killed one left open
before reading the markers, and fences a replay of the same DLQ still running.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from kops.admin import watermarks
from kops.client import (
    AdminSession,
    ClientSettings,
    KopsClientError,
    UnknownTopic,
    translate_error,
)
from kops.recipes import headers as h
from kops.recipes.dlq.ops import ensure_state_topic, load_markers
from kops.recipes.dlq.records import (
    BOOKKEEPING_PREFIXES,
    DLQ_PREFIXES,
    DeadLetter,
    read_dead_letters,
    replay_state_topic,
)
from kops.recipes.exactly_once import (
    AbortBackoff,
    TransactionalSender,
    fenced,
    read_committed,
    transactional_id,
    transactional_producer,
)
from kops.recipes.metrics import DLQ_REPLAYED
from kops.recipes.pacing import Pacer

# --------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to replay. Times are epoch ms on the failure time."""

    exception: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    key: str | None = None

    def matches(self, dl: DeadLetter) -> bool:
        if self.exception is not None and not dl.matches_exception(self.exception):
            return False
        failed = dl.failed_ms
        if self.since_ms is not None and (failed is None or failed < self.since_ms):
            return False
        if self.until_ms is not None and (failed is None or failed >= self.until_ms):
            return False
        return self.key is None or dl.record.key == self.key.encode()


@dataclass
class ReplayReport:
    dlq: str
    dry_run: bool
    scanned: int = 0
    matched: int = 0
    #: Sent (in a dry run: would be sent).
    replayed: int = 0
    #: Matching, not replayed before, but left for a later run by ``limit``.
    over_limit: int = 0
    limit: int | None = None
    already_replayed: int = 0
    in_doubt: int = 0
    no_target: int = 0
    targets: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    #: Ended early by the ``stop`` event (the worker shutting down).
    stopped: bool = False
    #: In a dry run: the records that would be replayed (the first 50).
    planned: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A dry run says ``would_replay`` (and lists ``planned``), never ``replayed``."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("targets", "planned")}
        out["targets"] = dict(self.targets)
        if self.dry_run:
            out["would_replay"] = out.pop("replayed")
            out["planned"] = self.planned
            out["planned_truncated"] = len(self.planned) < self.replayed
        return out

    def summary(self) -> str:
        """One line: what was (or would be) replayed, out of how many, and why not the rest."""
        verb = "would replay" if self.dry_run else "replayed"
        matching = f"{self.matched} matching dead letter{'s' * (self.matched != 1)}"
        line = f"{verb} {self.replayed} of {matching}"
        if self.targets:
            line += " to " + ", ".join(f"{t} ({n})" for t, n in self.targets.most_common())
        line += f" in {self.seconds:.1f}s"
        notes = []
        if self.over_limit:
            notes.append(
                f"{self.over_limit} more left by --limit {self.limit} "
                f"({'would be' if self.dry_run else 'to be'} replayed by a later run)"
            )
        if self.already_replayed:
            notes.append(f"{self.already_replayed} already replayed")
        if self.in_doubt:
            notes.append(f"{self.in_doubt} in doubt (see --include-in-doubt)")
        if self.no_target:
            notes.append(f"{self.no_target} without an original topic (use --to)")
        if self.stopped:
            notes.append("stopped early")
        return line + (f"; {', '.join(notes)}" if notes else "")


def _replay_headers(dl: DeadLetter, dlq_topic: str, to_original: bool) -> list:
    kept = h.without_prefix(dl.record.headers, BOOKKEEPING_PREFIXES + DLQ_PREFIXES)
    kept = [(k, v) for k, v in kept if k != h.MESSAGE_ID]
    r = dl.record
    updates = {h.REPLAY_OF: f"{dlq_topic}/{r.partition}/{r.offset}"}
    if to_original and dl.group:
        # Back on a shared topic, the copy is for the group that failed it: kops-wrapped
        # consumers of other groups (which handled the original fine) skip it.
        updates[h.RETRY_GROUP] = dl.group
    return h.replace(kept, updates)


class _Replayer:
    """Sends replays in batches: markers for the batch first (flushed), then the records,
    each at its paced time. A crash leaves at most one batch in doubt, never a duplicate.

    ``exactly_once``: each batch's records and their ``done`` markers in one transaction
    instead (no ``started`` markers, nothing in doubt)."""

    def __init__(
        self,
        admin: AdminSession,
        dlq_topic: str,
        rate: float | None,
        stop: threading.Event,
        *,
        exactly_once: bool = False,
    ):
        self.admin = admin
        self.settings = settings = admin.settings
        self.dlq_topic = dlq_topic
        self.state_topic = replay_state_topic(dlq_topic)
        self.stop = stop
        self.pacer = Pacer(rate, stop=stop)
        self.batch_size = max(1, math.ceil(rate / 10)) if rate else 500
        self.batch: list[tuple[DeadLetter, str]] = []
        self.partitions: dict[str, int] = {}
        self.errors: list[str] = []
        self.replayed_metric = DLQ_REPLAYED.labels(dlq=dlq_topic)
        self.txn: TransactionalSender | None = None
        if exactly_once:
            txn_id = transactional_id("dlq-replay", dlq_topic)
            self.producer = transactional_producer(settings, txn_id, **{"linger.ms": 5})
            self.txn = TransactionalSender(
                self.producer, None, what=f"replay {dlq_topic} ({txn_id})", stop=stop
            )
        else:
            self.producer = Producer(
                settings.producer_config(**{"enable.idempotence": True, "linger.ms": 0})
            )

    def check_target(self, topic: str) -> None:
        if topic in self.partitions:
            return
        try:
            md = self.admin.metadata(topic)
        except UnknownTopic:
            raise KopsClientError(
                f"replay target topic {topic!r} does not exist (create it or use --to)"
            ) from None
        self.partitions[topic] = len(md.topics[topic].partitions)

    def add(self, dl: DeadLetter, target: str) -> None:
        self.batch.append((dl, target))
        if len(self.batch) >= self.batch_size:
            self.send_batch()

    def _flush(self) -> None:
        remaining = self.producer.flush(self.settings.timeout * 3)
        if remaining:
            raise KopsClientError(f"replay: {remaining} records not delivered in time")
        if self.errors:
            raise KopsClientError(f"replay: delivery failed: {self.errors[0]}")

    def _mark(self, key: str, state: str, target: str) -> None:
        value = json.dumps({"state": state, "target": target, "at": int(time.time() * 1000)})
        self.producer.produce(self.state_topic, value.encode(), key=key.encode(),
                              on_delivery=self._on_marker)  # fmt: skip

    def _on_marker(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"marker: {err}")

    def _produce(self, dl: DeadLetter, target: str, on_delivery: Callable[..., None]) -> None:
        to_original = target == dl.original_topic
        kwargs: dict[str, Any] = {"headers": _replay_headers(dl, self.dlq_topic, to_original)}
        if dl.record.key is not None:
            kwargs["key"] = dl.record.key
        p = dl.original_partition
        # Same partition as the original (the same key order, whatever partitioner the
        # original producer used) when the partition still exists.
        if to_original and p is not None and 0 <= p < self.partitions[target]:
            kwargs["partition"] = p
        self.producer.produce(target, dl.record.value, on_delivery=on_delivery, **kwargs)
        self.producer.poll(0)

    def send_batch(self) -> None:
        if not self.batch:
            return
        if self.txn is not None:
            self._send_in_transaction()
            return
        for dl, target in self.batch:
            self._mark(dl.marker_key, "started", target)
        self._flush()
        for dl, target in self.batch:
            self.pacer.pace()
            key = dl.marker_key

            def done(err: Any, msg: Any, key: str = key, target: str = target) -> None:
                if err is not None:
                    self.errors.append(f"{target}: {err}")
                else:
                    self.replayed_metric.inc()
                    self._mark(key, "done", target)

            self._produce(dl, target, done)
        self.batch.clear()
        self._flush()
        self._flush()  # the "done" markers enqueued by delivery callbacks

    def _send_in_transaction(self) -> None:
        """The batch and its ``done`` markers in one transaction; an aborted one is sent
        again (nothing of it is visible)."""
        assert self.txn is not None

        def failed(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(f"{msg.topic()}: {err}")

        backoff = AbortBackoff(self.txn.what, self.stop)
        while True:
            self.errors.clear()
            self.txn.begin()
            problem = None
            try:
                for dl, target in self.batch:
                    self.pacer.pace()
                    self._produce(dl, target, failed)
                    self._mark(dl.marker_key, "done", target)
                self._flush()
            except KafkaException as exc:  # a produce refused: the transaction must abort
                if (gone := fenced(exc, self.txn.what)) is not None:
                    raise gone from None
                problem = str(exc)
            except KopsClientError as exc:
                problem = str(exc)
            if problem is None and self.txn.commit([]):
                self.replayed_metric.inc(len(self.batch))
                self.batch.clear()
                return
            if problem is not None:
                self.txn.abort()
            self.producer.flush(5)  # the purged records' reports, before the next attempt
            if self.stop.is_set():
                raise KopsClientError(f"{self.txn.what}: stopped with a batch aborted")
            backoff.aborted(problem or "commit aborted", f"batch of {len(self.batch)} records")

    def close(self) -> None:
        if self.txn is not None:
            self.txn.close()


def replay(
    target: ClientSettings | str,
    dlq_topic: str,
    *,
    to: str | None = None,
    where: ReplayFilter | None = None,
    rate: float | None = 50.0,
    limit: int | None = None,
    dry_run: bool = False,
    include_in_doubt: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    exactly_once: bool = False,
) -> ReplayReport:
    """Re-send dead letters to their original topic (or ``to``), at most ``rate`` per second.

    Key, value and the original headers are kept (dead-letter headers dropped,
    ``kops.replay.of`` added); a record goes back to its original partition when replayed to
    its original topic. Records already replayed (or in doubt after a crash, unless
    ``include_in_doubt``) are skipped. ``progress(done, total)`` is called per scanned record.
    Setting ``stop`` ends the run early, after the current batch (``report.stopped``).

    ``exactly_once``: each batch's records and their markers go in one transaction, and the
    DLQ and markers are read with read_committed: a killed run leaves nothing in doubt and
    the next one resumes where it stopped, each record in the target once for read_committed
    readers. Raises :class:`~kops.recipes.exactly_once.TransactionsUnsupported` on a
    cluster without transactions, :class:`~kops.recipes.exactly_once.ProducerFenced` when a
    newer replay of the same DLQ took over.
    """
    stop = stop or threading.Event()
    settings = ClientSettings.of(target)
    where = where or ReplayFilter()
    report = ReplayReport(dlq_topic, dry_run, limit=limit)
    started = time.monotonic()
    admin = AdminSession(settings)
    md = admin.metadata(dlq_topic)
    starts, ends = watermarks(admin, [(dlq_topic, p) for p in md.topics[dlq_topic].partitions])
    total = sum(ends.values()) - sum(starts.values())
    replayer = None
    if not dry_run:
        ensure_state_topic(admin, dlq_topic)
        # With exactly_once, before the markers are read: starting the transactional
        # producer settles what a killed run left open (committed or aborted).
        replayer = _Replayer(admin, dlq_topic, rate, stop, exactly_once=exactly_once)
    isolation = read_committed({}) if exactly_once else {}
    markers = load_markers(settings, dlq_topic, config=isolation)
    try:
        for dl in read_dead_letters(settings, dlq_topic, config=isolation):
            if stop.is_set():
                report.stopped = True
                break
            report.scanned += 1
            if progress:
                progress(report.scanned, total)
            if not where.matches(dl):
                continue
            report.matched += 1
            state = markers.get(dl.marker_key)
            if state == "done" or (state == "started" and not include_in_doubt):
                report.already_replayed += state == "done"
                report.in_doubt += state == "started"
                continue
            dest = to or dl.original_topic
            if not dest:
                report.no_target += 1
                continue
            if limit is not None and report.replayed >= limit:
                # Keep scanning, so "N of M matching" counts every match, not the first N.
                report.over_limit += 1
                continue
            report.replayed += 1
            report.targets[dest] += 1
            if replayer is None:
                if len(report.planned) < 50:
                    report.planned.append({**dl.to_dict(preview=200), "replay_to": dest})
                continue
            replayer.check_target(dest)
            replayer.add(dl, dest)
        if replayer is not None:
            replayer.send_batch()
    except KafkaException as exc:
        raise translate_error(exc, "replay", dlq_topic) from exc
    finally:
        if replayer is not None:
            replayer.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report
