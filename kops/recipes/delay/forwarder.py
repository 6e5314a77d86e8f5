"""Tier forwarders: move delayed records on when they are due.

One consumer per tier topic, all in one consumer group (``kops.delay.forwarders``), so any
number of worker processes share the tiers' partitions. A tier partition holds records in
arrival order and they all wait the same time, so only its head needs checking:

- head due -> produce it to its target (or, when time remains, to the largest smaller tier:
  "cascading"), wait for the ack, then commit. Forward-then-commit with an idempotent
  producer: a crash at any point loses nothing; a record forwarded twice keeps its message id.
- head not due -> pause the partition (no fetching, no busy polling) and sleep until the
  head's release time, then resume.
- target missing (or refusing the record for good) -> the record goes to the delay
  dead-letter topic with the error in its headers (:mod:`kops.recipes.delay.delivery`); the
  tier keeps flowing. Transient errors are retried with a backoff.

Rebalances (a worker joining or leaving, a broker restart): librdkafka keeps a partition's
paused state across revoke and assign, so every assignment is explicitly resumed and started
at the group's committed offset, skipping what this process knows it already forwarded;
per-partition state is dropped on revoke (after a synchronous commit) and on loss.

A record's release time in tier T is ``min(due, arrival + T)``: it never leaves before its
due time (never early), and a record with less than T left (only in the smallest tier) is
not held longer than it needs. Before anything is delivered to its target the forwarder
catches up with the cancel topic, so a cancel acknowledged before the due time always wins.

With ``exactly_once`` each tier forwards and commits a round in one transaction (its own
transactional producer, read_committed tiers; :mod:`kops.recipes.exactly_once`): a crash,
a revoke or a broker outage never forwards a record twice, and target readers with
``isolation.level=read_committed`` see each record once. The cluster must serve
transactions; one that refuses them stops the forwarders with an error.

Lateness (delivery time - due time, in ms) is kept per tier in memory and published every
``stats_interval`` seconds to the compacted stats topic (see :mod:`kops.recipes.delay.status`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import OffsetSpec
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from kops.admin import list_offsets
from kops.client import AdminSession, BrokerUnavailable, ClientSettings, ErrorWatch, KopsClientError
from kops.produce import produce_with_room
from kops.recipes.delay.cancel import CancelView
from kops.recipes.delay.delivery import TargetCache
from kops.recipes.delay.status import SAMPLES_PUBLISHED, LatenessStats
from kops.recipes.delay.tier_forwarder import ForwarderOptions, TierForwarder
from kops.recipes.delay.tiers import ensure_tier_topics, format_tier
from kops.recipes.exactly_once import transactional_id, transactional_producer
from kops.recipes.metrics import DELAY_PARKED

__all__ = ["CancelView", "DelayForwarders", "ForwarderOptions", "LatenessStats", "TierForwarder"]

log = logging.getLogger("kops.delay")

#: Seconds between updates of the parked-records gauge (one ListOffsets for every tier).
PARKED_INTERVAL = 5.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _transient(exc: BaseException) -> bool:
    return (
        isinstance(exc, BrokerUnavailable)
        or (isinstance(exc, KopsClientError) and exc.retriable)
        or (isinstance(exc, KafkaException) and bool(exc.args) and exc.args[0].retriable())
    )


def _log_retry(state: Any) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0
    log.warning("delay forwarders: %s; retrying in %.1fs", exc, wait)


def _retry_transient(stop: threading.Event) -> Any:
    """Start-up calls ride out a broker that is still starting (e.g. under `kops up`),
    saying so on the log at each attempt; anything else, or a broker still away after a
    minute, fails the job and the worker retries it later (logged too)."""
    return retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_delay(60) | stop_when_event_set(stop),
        wait=wait_exponential(multiplier=0.2, max=5),
        before_sleep=_log_retry,
        sleep=stop.wait,  # a stop request ends the wait at once
        reraise=True,
    )


def default_instance() -> str:
    """Names this process in stats records: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- all tiers


class _StatsSkipped(Exception):
    pass


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
        try:
            self._run(stop)
        except Exception:
            if stop.is_set():  # stopped while still waiting for the cluster: not a failure
                log.info("delay forwarders stopped before the cluster answered")
                return
            raise

    def _run(self, stop: threading.Event) -> None:
        opts = self.options
        if opts.create_topics:
            _retry_transient(stop)(ensure_tier_topics)(
                self.settings, opts.tiers, opts.partitions,
                cancel_topic=opts.cancel_topic, stats_topic=opts.stats_topic,
                dlq_topic=opts.dlq_topic,
            )  # fmt: skip
        producer = Producer(
            self.settings.producer_config(
                ErrorWatch(self.settings.bootstrap, log=log, what="delay producer"),
                **{"enable.idempotence": True, "linger.ms": 2, "delivery.timeout.ms": 120000},
            )
        )
        targets = TargetCache(producer)
        if opts.cancel_topic:
            self.cancels = CancelView(self.settings, opts.cancel_topic)
            _retry_transient(stop)(self.cancels.start)()
        inner = threading.Event()
        self._failed: list[str] = []
        threads = []
        try:
            txn_producers = self._transactional_producers(stop)
            self.forwarders = [
                TierForwarder(
                    self.settings,
                    opts,
                    s,
                    producer,
                    self.cancels,
                    self.stats,
                    targets,
                    txn_producer=txn_producers.get(s),
                )
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
            next_parked = time.monotonic()
            admin = AdminSession(self.settings)
            while not stop.wait(0.2) and not self._failed:
                if opts.stats_topic and opts.stats_interval > 0 and time.monotonic() >= next_stats:
                    self.publish_stats(producer, stop)
                    next_stats = time.monotonic() + opts.stats_interval
                if time.monotonic() >= next_parked:
                    self.update_parked(admin)
                    next_parked = time.monotonic() + PARKED_INTERVAL
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

    def _transactional_producers(self, stop: threading.Event) -> dict[float, Producer]:
        """With exactly_once, one transactional producer per tier (a transaction carries
        one consumer's offsets). Its id is stable when ``instance_id`` is: a restarted
        worker then fences its predecessor and aborts what it left open at once."""
        if not self.options.exactly_once:
            return {}
        out: dict[float, Producer] = {}
        for s in self.options.tiers.seconds:
            txn_id = transactional_id("delay", self.options.group, format_tier(s), self.instance)
            out[s] = _retry_transient(stop)(transactional_producer)(
                self.settings, txn_id,
                watch=ErrorWatch(self.settings.bootstrap, log=log, what=f"tier {format_tier(s)}"),
                timeout_ms=self.options.transaction_timeout_ms, **{"linger.ms": 2},
            )  # fmt: skip
        return out

    def update_parked(self, admin: AdminSession) -> None:
        """Set ``kops_delay_parked_records`` per tier: end offset minus this process's
        position, over the partitions it holds (several processes' gauges add up)."""
        forwarders = list(self.forwarders)
        positions = {(fw.topic, p): off for fw in forwarders for p, off in fw.positions().items()}
        try:
            ends = list_offsets(admin, sorted(positions), OffsetSpec.latest())
        except Exception as exc:  # a gauge never stops the forwarders
            log.debug("parked records: %s", exc)  # the broker away: keep the last values
            return
        for fw in forwarders:
            parked = sum(
                max((ends.get((t, p)) or 0) - off, 0)
                for (t, p), off in positions.items()
                if t == fw.topic
            )
            DELAY_PARKED.labels(tier=fw.label).set(parked)

    def consumer_groups(self) -> list[str]:
        """The group it consumes in (the worker's lag exporter follows it)."""
        return [self.options.group]

    def status_line(self) -> str:
        """``"18/18 tiers assigned, 42 delivered"``: what ``kops up`` shows for the job."""
        forwarders = list(self.forwarders)
        if not forwarders:
            return "starting"
        held = sum(1 for fw in forwarders if fw.parts)
        delivered = sum(c.get("delivered", 0) for c in list(self.stats.counts.values()))
        return f"{held}/{len(forwarders)} tiers assigned, {delivered} delivered"

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

    def publish_stats(self, producer: Producer, stop: threading.Event | None = None) -> None:
        """One stats record per tier to the stats topic (key: group|instance|tier).

        A full producer queue is waited out (stats are small and rare), unless ``stop`` is
        set meanwhile: then the rest of this round's stats are skipped."""

        def give_up_on_stop() -> None:
            if stop is not None and stop.is_set():
                raise _StatsSkipped("stopping with the producer queue full")

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
                produce_with_room(
                    producer, self.options.stats_topic, json.dumps(value).encode(),
                    key=key.encode(), on_full=give_up_on_stop,
                )  # fmt: skip
            except _StatsSkipped as exc:
                log.warning("stats: %s", exc)
                break
            except KafkaException as exc:
                log.warning("stats: %s", exc)
        producer.poll(0)
