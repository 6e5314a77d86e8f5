"""What ``kops top`` shows: one snapshot of a cluster, over the Kafka protocol alone.

A :class:`TopSampler` takes :class:`Snapshot` after snapshot: brokers and the controller,
per-topic end offsets (and, from the second snapshot on, messages per second), consumer
groups with lag and status (:class:`kops.recipes.lag.LagMonitor`: the status needs several
samples, so the sampler keeps one monitor across snapshots), delay tiers with their backlog
(:func:`kops.recipes.delay.status.delay_status`) and dead-letter topics with their growth.
Nothing here needs the kops broker or the kops worker, so it works against any Kafka cluster.

Lateness of delayed records is only known to the forwarders: given the Prometheus address of
one or more workers (``kops worker run --metrics``), the sampler reads their
``kops_delay_lateness_seconds`` histograms and reports p50/p99 per tier, computed from the
buckets as PromQL's ``histogram_quantile`` does (:func:`histogram_quantile`).

Example::

    from kops.recipes.top import TopSampler
    with TopSampler("127.0.0.1:9092", worker_metrics=["127.0.0.1:9400"]) as top:
        first = top.snapshot()
        time.sleep(2)
        print(top.snapshot().to_dict()["topics"])
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kops.admin import is_internal_topic, watermarks
from kops.client import AdminSession, ClientSettings
from kops.recipes.delay.status import delay_status
from kops.recipes.delay.tiers import DelayTiers
from kops.recipes.dlq.records import REPLAYED_SUFFIX, looks_like_dlq
from kops.recipes.lag import LagMonitor

__all__ = [
    "BrokerRow",
    "DlqRow",
    "GroupRow",
    "Snapshot",
    "TierRow",
    "TopSampler",
    "TopicRow",
    "WorkerMetrics",
    "WorkerRow",
    "fetch_worker_metrics",
    "histogram_quantile",
    "metrics_url",
    "parse_worker_metrics",
]

LATENESS = "kops_delay_lateness_seconds"
FORWARDED = "kops_delay_forwarded_total"
PARKED = "kops_delay_parked_records"

#: Seconds to wait for a worker's metrics page: a slow worker must not stall the view.
WORKER_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------- quantiles


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (0..1) of a Prometheus histogram given as ``(le, cumulative
    count)`` pairs, the way PromQL's ``histogram_quantile`` computes it: find the bucket the
    rank falls in and interpolate linearly between its bounds (the first bucket's lower
    bound is 0). A rank in the ``+Inf`` bucket gives the highest finite bound.

    None when there are no observations or no ``+Inf`` bucket (PromQL's NaN).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    ordered = sorted((float(le), float(count)) for le, count in buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Counts scraped at slightly different moments can dip; PromQL evens them out too.
    running = 0.0
    fixed = []
    for le, count in ordered:
        running = max(running, count)
        fixed.append((le, running))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, (_, count) in enumerate(fixed) if count >= rank)
    if index == len(fixed) - 1:
        return fixed[-2][0]
    upper, count = fixed[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = fixed[index - 1]
    inside = count - below
    if inside <= 0:
        return lower
    return lower + (upper - lower) * (rank - below) / inside


# --------------------------------------------------------------------------- worker metrics


def metrics_url(address: str) -> str:
    """``HOST:PORT`` (what ``kops worker run --metrics`` takes) -> its ``/metrics`` URL;
    a full URL is kept as given."""
    address = address.strip()
    if "://" in address:
        return address
    return f"http://{address.rstrip('/')}/metrics"


@dataclass
class WorkerMetrics:
    """The delay figures of one or more workers, per tier label (``1s``, ``5m``)."""

    #: tier -> le -> cumulative count, summed over workers (histograms add up).
    lateness_buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    lateness_count: dict[str, float] = field(default_factory=dict)
    forwarded: dict[str, float] = field(default_factory=dict)
    parked: dict[str, float] = field(default_factory=dict)

    def merge(self, other: WorkerMetrics) -> None:
        for tier, buckets in other.lateness_buckets.items():
            mine = self.lateness_buckets.setdefault(tier, {})
            for le, count in buckets.items():
                mine[le] = mine.get(le, 0.0) + count
        for name in ("lateness_count", "forwarded", "parked"):
            into: dict[str, float] = getattr(self, name)
            for tier, value in getattr(other, name).items():
                into[tier] = into.get(tier, 0.0) + value

    def lateness(self, tier: str, q: float) -> float | None:
        """Seconds: the ``q`` quantile of the tier's lateness since the workers started."""
        buckets = self.lateness_buckets.get(tier)
        return None if not buckets else histogram_quantile(q, buckets.items())

    def tiers(self) -> set[str]:
        return set(self.lateness_buckets) | set(self.forwarded) | set(self.parked)


def parse_worker_metrics(text: str) -> WorkerMetrics:
    """The delay figures in a Prometheus text page (names: :mod:`kops.recipes.metrics`)."""
    out = WorkerMetrics()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            tier = s.labels.get("tier")
            if tier is None:
                continue
            if s.name == f"{LATENESS}_bucket":
                buckets = out.lateness_buckets.setdefault(tier, {})
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == f"{LATENESS}_count":
                out.lateness_count[tier] = out.lateness_count.get(tier, 0.0) + s.value
            elif s.name == FORWARDED:
                out.forwarded[tier] = out.forwarded.get(tier, 0.0) + s.value
            elif s.name == PARKED:
                out.parked[tier] = out.parked.get(tier, 0.0) + s.value
    return out


def fetch_worker_metrics(url: str, timeout: float = WORKER_TIMEOUT_S) -> WorkerMetrics:
    """GET a worker's metrics page and parse it; raises OSError (URLError) or ValueError."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8", errors="replace")
    return parse_worker_metrics(text)


# --------------------------------------------------------------------------- snapshot rows


@dataclass
class BrokerRow:
    id: int
    host: str
    port: int
    controller: bool
    #: Partitions (of every topic, internal ones included) this broker leads.
    leader_partitions: int = 0


@dataclass
class TopicRow:
    topic: str
    partitions: int
    #: Sum of the partitions' log end offsets: messages ever written.
    end_offset: int
    #: end - start summed: records retained now.
    records: int
    #: Messages per second since the previous snapshot (None on the first, or when the
    #: topic is new or was recreated since).
    rate: float | None = None
    #: Partitions whose ISR is smaller than the replica set, and partitions with no leader.
    under_replicated: int = 0
    offline: int = 0


@dataclass
class GroupRow:
    group: str
    state: str
    members: int
    total_lag: int
    max_lag_seconds: float | None
    #: The worst partition status (:mod:`kops.recipes.lag`).
    status: str


@dataclass
class TierRow:
    tier: str
    topic: str
    partitions: int
    #: Records not yet forwarded (end - committed offset of the forwarders' group).
    backlog: int
    oldest_due_ms: int | None
    #: How long the oldest waiting record is past its due time (0 when not yet due).
    overdue_s: float | None
    #: From the workers' metrics (None without --worker-metrics or before any delivery).
    lateness_p50_ms: float | None = None
    lateness_p99_ms: float | None = None
    delivered: int | None = None
    forwarded_rate: float | None = None
    parked: int | None = None


@dataclass
class DlqRow:
    topic: str
    partitions: int
    records: int
    #: Dead letters written since the previous snapshot (growth of the end offsets, so a
    #: purge in between does not count as negative growth); None on the first.
    growth: int | None = None


@dataclass
class WorkerRow:
    url: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Snapshot:
    #: Wall time (epoch seconds) the snapshot was taken.
    taken_at: float
    #: Seconds since the previous snapshot's offsets (None on the first).
    elapsed: float | None
    cluster_id: str | None
    controller_id: int | None
    brokers: list[BrokerRow]
    topics: list[TopicRow]
    groups: list[GroupRow]
    delay_tiers: list[TierRow]
    dlqs: list[DlqRow]
    workers: list[WorkerRow]
    #: Monotonic time of the offsets, for the next snapshot's rates.
    mono: float = field(default=0.0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``kops top --once --json`` prints)."""

        def rows(items: Sequence[Any]) -> list[dict[str, Any]]:
            return [_rounded(asdict(i)) for i in items]

        return {
            "taken_at": round(self.taken_at, 3),
            "elapsed": None if self.elapsed is None else round(self.elapsed, 3),
            "cluster_id": self.cluster_id,
            "controller_id": self.controller_id,
            "brokers": rows(self.brokers),
            "topics": rows(self.topics),
            "groups": rows(self.groups),
            "delay_tiers": rows(self.delay_tiers),
            "dlqs": rows(self.dlqs),
            "workers": [{"url": w.url, "ok": w.ok, "error": w.error} for w in self.workers],
        }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


# --------------------------------------------------------------------------- sampler


class TopSampler:
    """Takes snapshots of a cluster; keeps what rates, growth and statuses need between
    them. Not thread-safe. ``groups=None`` follows every consumer group."""

    def __init__(
        self,
        target: ClientSettings | str,
        *,
        tiers: DelayTiers | None = None,
        worker_metrics: Sequence[str] = (),
        groups: Sequence[str] | None = None,
        window: int = 3,
        time_lag: bool = True,
    ):
        self.settings = ClientSettings.of(target)
        self.tiers = tiers or DelayTiers.parse()
        self.worker_urls = [metrics_url(a) for a in worker_metrics]
        self.time_lag = time_lag
        self._admin = AdminSession(self.settings)
        self._lag = LagMonitor(
            self.settings, groups, window=window, skip_unknown=True, reuse_reader=True
        )
        self._previous: Snapshot | None = None
        self._previous_forwarded: dict[str, float] = {}

    def close(self) -> None:
        self._lag.close()
        self._admin.close()

    def __enter__(self) -> TopSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> Snapshot:
        """One snapshot; raises :class:`kops.client.KopsClientError` when the cluster does
        not answer. An unreachable worker is reported in ``workers``, never raised."""
        md = self._admin.metadata()
        keys = [
            (name, p)
            for name, t in md.topics.items()
            if not is_internal_topic(name)
            for p in t.partitions
        ]
        starts, ends = watermarks(self._admin, keys)
        mono = time.monotonic()
        prev = self._previous
        elapsed = None if prev is None else mono - prev.mono

        brokers = self._brokers(md)
        topics = self._topics(md, starts, ends, prev, elapsed)
        self._lag.sample()
        groups = [
            GroupRow(g.group, g.state, g.members, g.total_lag, g.max_lag_seconds, g.status)
            for g in self._lag.report(time_lag=self.time_lag)
        ]
        workers, metrics = self._worker_metrics()
        tiers = self._tiers(metrics, elapsed)
        dlqs = self._dlqs(topics, prev)
        controller = md.controller_id if md.controller_id is not None else -1
        snap = Snapshot(
            taken_at=time.time(),
            elapsed=elapsed,
            cluster_id=md.cluster_id,
            controller_id=controller if controller >= 0 else None,
            brokers=brokers,
            topics=topics,
            groups=groups,
            delay_tiers=tiers,
            dlqs=dlqs,
            workers=workers,
            mono=mono,
        )
        self._previous = snap
        return snap

    # -- pieces

    @staticmethod
    def _brokers(md: Any) -> list[BrokerRow]:
        led: dict[int, int] = {}
        for t in md.topics.values():
            for p in t.partitions.values():
                if p.leader >= 0:
                    led[p.leader] = led.get(p.leader, 0) + 1
        return [
            BrokerRow(b.id, b.host, b.port, b.id == md.controller_id, led.get(b.id, 0))
            for b in sorted(md.brokers.values(), key=lambda b: b.id)
        ]

    @staticmethod
    def _topics(
        md: Any,
        starts: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], int],
        prev: Snapshot | None,
        elapsed: float | None,
    ) -> list[TopicRow]:
        before = {t.topic: t for t in prev.topics} if prev is not None else {}
        out = []
        for name in sorted(md.topics):
            if is_internal_topic(name):
                continue
            parts = md.topics[name].partitions
            end = sum(ends.get((name, p), 0) for p in parts)
            row = TopicRow(
                topic=name,
                partitions=len(parts),
                end_offset=end,
                records=sum(
                    max(ends.get((name, p), 0) - starts.get((name, p), 0), 0) for p in parts
                ),
                under_replicated=sum(1 for p in parts.values() if len(p.isrs) < len(p.replicas)),
                offline=sum(1 for p in parts.values() if p.leader < 0),
            )
            old = before.get(name)
            if old is not None and elapsed and end >= old.end_offset:
                row.rate = (end - old.end_offset) / elapsed
            out.append(row)
        return out

    def _worker_metrics(self) -> tuple[list[WorkerRow], WorkerMetrics | None]:
        if not self.worker_urls:
            return [], None
        merged = WorkerMetrics()
        rows = []
        for url in self.worker_urls:
            try:
                merged.merge(fetch_worker_metrics(url))
                rows.append(WorkerRow(url))
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                rows.append(
                    WorkerRow(url, error=" ".join(str(reason).split()) or type(exc).__name__)
                )
        return rows, merged if any(r.ok for r in rows) else None

    def _tiers(self, metrics: WorkerMetrics | None, elapsed: float | None) -> list[TierRow]:
        now_ms = time.time() * 1000
        out = []
        for st in delay_status(self.settings, self.tiers, stats_topic=None):
            if not st.exists:
                continue
            overdue = None
            if st.oldest_due_ms is not None:
                overdue = max(now_ms - st.oldest_due_ms, 0.0) / 1000
            row = TierRow(
                tier=st.tier,
                topic=st.topic,
                partitions=st.partitions,
                backlog=st.pending,
                oldest_due_ms=st.oldest_due_ms,
                overdue_s=overdue,
            )
            if metrics is not None:
                self._fill_worker_figures(row, metrics, elapsed)
            out.append(row)
        if metrics is not None:
            self._previous_forwarded = dict(metrics.forwarded)
        return out

    def _fill_worker_figures(
        self, row: TierRow, metrics: WorkerMetrics, elapsed: float | None
    ) -> None:
        for q, name in ((0.5, "lateness_p50_ms"), (0.99, "lateness_p99_ms")):
            seconds = metrics.lateness(row.tier, q)
            setattr(row, name, None if seconds is None else seconds * 1000)
        if row.tier in metrics.lateness_count:
            row.delivered = int(metrics.lateness_count[row.tier])
        if row.tier in metrics.parked:
            row.parked = int(metrics.parked[row.tier])
        forwarded = metrics.forwarded.get(row.tier)
        before = self._previous_forwarded.get(row.tier)
        # A counter that went down is a restarted worker: no rate for this interval.
        if forwarded is not None and before is not None and elapsed and forwarded >= before:
            row.forwarded_rate = (forwarded - before) / elapsed

    @staticmethod
    def _dlqs(topics: list[TopicRow], prev: Snapshot | None) -> list[DlqRow]:
        before = {t.topic: t.end_offset for t in prev.topics} if prev is not None else None
        out = []
        for t in topics:
            if not looks_like_dlq(t.topic) or t.topic.endswith(REPLAYED_SUFFIX):
                continue
            growth = None
            if before is not None:
                growth = max(t.end_offset - before.get(t.topic, 0), 0)
            out.append(DlqRow(t.topic, t.partitions, t.records, growth))
        return out
