"""Delay queue status: pending records per tier, oldest due time, lateness p50/p99.

Forwarders keep recent lateness samples per tier in memory (:class:`LatenessStats`) and
publish them every few seconds to the compacted stats topic (``kops.delay.stats``), one record
per (group, forwarder process, tier) holding its last samples. :func:`delay_status` is what
``kops delay status`` shows from any process: it merges the fresh stats records, and reads
pending counts (end offset - committed offset of the forwarders' group) and each partition's
head record (its due time) straight from the tier topics.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from kops.client import ClientSettings, ErrorWatch, KopsClientError, fetch_metadata, translate_error
from kops.recipes import headers as h
from kops.recipes.delay.tiers import FORWARDER_GROUP, STATS_TOPIC, DelayTiers, format_tier
from kops.recipes.metrics import DELAY_CANCELLATIONS, DELAY_FORWARDED, DELAY_LATENESS

__all__ = [
    "LatenessStats",
    "TierStatus",
    "delay_status",
    "percentiles",
    "read_stats",
]

#: Recent lateness samples kept per tier, in memory and in each stats record.
SAMPLES_KEPT = 1000
SAMPLES_PUBLISHED = 256
#: Stats records older than this are from forwarders that are gone: ignored.
STATS_MAX_AGE_S = 600.0


class LatenessStats:
    """Per-tier counters and recent lateness samples (ms). Thread-safe.

    Also the one place the delay metrics of :mod:`kops.recipes.metrics` are updated
    (lateness, forwarded, cancellations), so the stats topic and Prometheus agree."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, deque[int]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        # tier -> (forwarded counter, lateness histogram) children, looked up once per tier.
        self._metrics: dict[str, tuple[Any, Any]] = {}

    def _tier(self, tier: str) -> dict[str, int]:
        if tier not in self.counts:
            self.counts[tier] = {
                "delivered": 0, "cascaded": 0, "cancelled": 0, "invalid": 0, "dead_lettered": 0,
            }  # fmt: skip
            self._samples[tier] = deque(maxlen=SAMPLES_KEPT)
            self._metrics[tier] = (
                DELAY_FORWARDED.labels(tier=tier), DELAY_LATENESS.labels(tier=tier),
            )  # fmt: skip
        return self.counts[tier]

    def count(self, tier: str, what: str, n: int = 1) -> None:
        with self._lock:
            self._tier(tier)[what] += n
            if what == "cascaded":  # on to the next tier: forwarded too
                self._metrics[tier][0].inc(n)
            elif what == "cancelled":
                DELAY_CANCELLATIONS.inc(n)

    def delivered(self, tier: str, lateness_ms: Iterable[int]) -> None:
        with self._lock:
            counts = self._tier(tier)
            forwarded, lateness = self._metrics[tier]
            n = 0
            for value in lateness_ms:
                counts["delivered"] += 1
                self._samples[tier].append(value)
                lateness.observe(max(value, 0) / 1000)
                n += 1
            forwarded.inc(n)

    def samples(self, tier: str) -> list[int]:
        with self._lock:
            return list(self._samples.get(tier, ()))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{tier: {counts..., "p50_ms", "p99_ms", "max_ms", "samples"}}``."""
        with self._lock:
            out = {}
            for tier, counts in self.counts.items():
                samples = list(self._samples[tier])
                out[tier] = {**counts, **percentiles(samples), "samples": samples}
            return out


def percentiles(samples: Iterable[int]) -> dict[str, int | None]:
    """p50/p99/max of lateness samples (nearest rank); None when there are none."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}

    def rank(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": ordered[-1]}


# --------------------------------------------------------------------------- status


@dataclass
class TierStatus:
    """One tier as ``kops delay status`` shows it."""

    tier: str
    topic: str
    exists: bool = True
    partitions: int = 0
    #: Records not yet forwarded: end offset - committed offset of the forwarders' group.
    pending: int = 0
    #: Earliest due time (epoch ms) among the partitions' head records; None when empty.
    oldest_due_ms: int | None = None
    #: From the forwarders' stats records (summed over forwarder processes).
    forwarders: int = 0
    delivered: int = 0
    cascaded: int = 0
    cancelled: int = 0
    #: Records sent to the delay dead-letter topic (target missing or refusing them).
    dead_lettered: int = 0
    samples: int = 0
    lateness_p50_ms: int | None = None
    lateness_p99_ms: int | None = None
    lateness_max_ms: int | None = None
    partition_detail: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reader(settings: ClientSettings, watch: ErrorWatch) -> Consumer:
    # A throwaway group id: status never commits and never joins a group.
    return Consumer(
        settings.consumer_config(
            f"kops.delay.status.{time.time_ns()}", watch, **{"enable.partition.eof": True}
        )
    )


def _read_all(consumer: Consumer, tps: list[TopicPartition], timeout: float) -> list[Any]:
    """Every record from the given start offsets to the current end of each partition."""
    ends = {}
    for tp in tps:
        _low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        if high > max(tp.offset, 0):
            ends[tp.partition] = high
    if not ends:
        return []
    consumer.assign(tps)
    out = []
    deadline = time.monotonic() + timeout
    while ends and time.monotonic() < deadline:
        m = consumer.poll(0.2)
        if m is None:
            continue
        if m.error() is not None:
            continue
        out.append(m)
        if m.offset() + 1 >= ends.get(m.partition(), 0):
            ends.pop(m.partition(), None)
    consumer.unassign()
    return out


def read_stats(
    target: ClientSettings | str,
    *,
    stats_topic: str = STATS_TOPIC,
    group: str = FORWARDER_GROUP,
    max_age: float = STATS_MAX_AGE_S,
) -> dict[str, list[dict[str, Any]]]:
    """The latest stats record of each forwarder process, by tier label; stale ones dropped."""
    settings = ClientSettings.of(target)
    watch = ErrorWatch(settings.bootstrap)
    consumer = _reader(settings, watch)
    try:
        try:
            md = fetch_metadata(consumer, watch, settings.timeout, stats_topic)
        except KopsClientError:
            return {}
        tps = [TopicPartition(stats_topic, p, 0) for p in md.topics[stats_topic].partitions]
        latest: dict[bytes, dict[str, Any]] = {}
        for m in _read_all(consumer, tps, settings.timeout):
            if m.key() is None:
                continue
            if m.value() is None:
                latest.pop(m.key(), None)
                continue
            try:
                latest[m.key()] = json.loads(m.value())
            except ValueError:
                continue
    finally:
        consumer.close()
    cutoff = time.time() * 1000 - max_age * 1000
    by_tier: dict[str, list[dict[str, Any]]] = {}
    for rec in latest.values():
        if rec.get("group") == group and rec.get("at_ms", 0) >= cutoff:
            by_tier.setdefault(str(rec.get("tier")), []).append(rec)
    return by_tier


def delay_status(
    target: ClientSettings | str,
    tiers: DelayTiers | None = None,
    *,
    group: str = FORWARDER_GROUP,
    stats_topic: str | None = STATS_TOPIC,
) -> list[TierStatus]:
    """Per tier: pending records, oldest due time, and lateness p50/p99 of recent deliveries."""
    settings = ClientSettings.of(target)
    tiers = tiers or DelayTiers.parse()
    watch = ErrorWatch(settings.bootstrap)
    stats = read_stats(settings, stats_topic=stats_topic, group=group) if stats_topic else {}
    # Committed offsets of the forwarders' group; this consumer never subscribes, so it
    # never joins (or disturbs) the group.
    group_reader = Consumer(settings.consumer_config(group, watch))
    peeker = _reader(settings, watch)
    out = []
    try:
        md = fetch_metadata(group_reader, watch, settings.timeout)
        for seconds in tiers.seconds:
            label, topic = format_tier(seconds), tiers.topic(seconds)
            st = TierStatus(tier=label, topic=topic)
            out.append(st)
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                st.exists = False
                continue
            _fill_offsets(st, group_reader, peeker, sorted(tmd.partitions), settings.timeout)
            _fill_lateness(st, stats.get(label, []))
    except KafkaException as exc:
        raise translate_error(exc, "delay status") from exc
    finally:
        group_reader.close()
        peeker.close()
    return out


def _fill_offsets(
    st: TierStatus, group_reader: Consumer, peeker: Consumer, partitions: list[int], timeout: float
) -> None:
    st.partitions = len(partitions)
    committed = group_reader.committed(
        [TopicPartition(st.topic, p) for p in partitions], timeout=timeout
    )
    heads = []
    for tp in committed:
        low, high = group_reader.get_watermark_offsets(
            TopicPartition(st.topic, tp.partition), timeout=timeout
        )
        start = tp.offset if tp.offset >= 0 else low  # never committed: from the log start
        start = max(start, low)
        pending = max(high - start, 0)
        st.pending += pending
        st.partition_detail.append(
            {"partition": tp.partition, "committed": start, "end": high, "pending": pending}
        )
        if pending:
            heads.append(TopicPartition(st.topic, tp.partition, start))
    dues = []
    for m in _first_records(peeker, heads, timeout):
        due = h.get(m.headers(), h.DELAY_DUE_MS)
        if due is not None and due.isdigit():
            dues.append(int(due))
    st.oldest_due_ms = min(dues) if dues else None


def _first_records(consumer: Consumer, heads: list[TopicPartition], timeout: float) -> list[Any]:
    if not heads:
        return []
    consumer.assign(heads)
    wanted = {tp.partition for tp in heads}
    out = []
    deadline = time.monotonic() + min(timeout, 5.0)
    while wanted and time.monotonic() < deadline:
        m = consumer.poll(0.2)
        if m is None or m.error() is not None or m.partition() not in wanted:
            continue
        wanted.discard(m.partition())
        out.append(m)
    consumer.unassign()
    return out


def _fill_lateness(st: TierStatus, records: list[dict[str, Any]]) -> None:
    samples: list[int] = []
    for rec in records:
        st.forwarders += 1
        st.delivered += int(rec.get("delivered", 0))
        st.cascaded += int(rec.get("cascaded", 0))
        st.cancelled += int(rec.get("cancelled", 0))
        st.dead_lettered += int(rec.get("dead_lettered", 0))
        samples.extend(int(x) for x in rec.get("lateness_ms", []))
    st.samples = len(samples)
    pct = percentiles(samples)
    st.lateness_p50_ms, st.lateness_p99_ms, st.lateness_max_ms = (
        pct["p50_ms"], pct["p99_ms"], pct["max_ms"],
    )  # fmt: skip
