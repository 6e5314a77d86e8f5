"""How many partitions? Measure produce and consume throughput per partition count.

Confluent's rule: measure the produce throughput p and consume throughput c of one
partition, then partitions >= max(t/p, t/c) for a target throughput t. :func:`sweep` measures
every count on a fresh topic, so it also shows where adding partitions stops paying off on
this cluster with these clients, and :meth:`SweepResult.recommend` reports both the rule and
the smallest count that actually reached t.

Example::

    from kops.recipes.bench.sweep import sweep
    result = sweep(bootstrap, [1, 2, 4, 8], records=50_000, record_size=1024, consumers=4)
    print(result.recommend(target_mb_s=50).text)
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kops import admin as topics_admin
from kops.client import ClientSettings, KopsClientError
from kops.recipes.bench.load import BenchResult, Progress, bench_consume, bench_produce

__all__ = [
    "DECIMALS",
    "Recommendation",
    "SweepPoint",
    "SweepResult",
    "plot_sweep",
    "rule_partitions",
    "sweep",
]


@dataclass(frozen=True)
class SweepPoint:
    partitions: int
    produce: BenchResult
    consume: BenchResult

    @property
    def mb_per_sec(self) -> float:
        """What the topic sustains end to end: the slower of producing and consuming."""
        return min(self.produce.mb_per_sec, self.consume.mb_per_sec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "produce": self.produce.to_dict(),
            "consume": self.consume.to_dict(),
        }


#: Decimals kept of every figure the recommendation uses (MB/s: 1 KB/s resolution). The text,
#: the JSON and the plot show these rounded figures, and the rule is computed from them, so
#: anyone can redo the arithmetic from the JSON and get the same count.
DECIMALS = 3


def rule_partitions(target_mb_s: float, p: float, c: float) -> int | None:
    """Confluent's rule: ``ceil(max(t/p, t/c))`` partitions (at least 1), where p and c are
    the produce and consume MB/s one partition sustains; None when either is unknown (0)."""
    if target_mb_s <= 0 or p <= 0 or c <= 0:
        return None
    return max(1, math.ceil(max(target_mb_s / p, target_mb_s / c)))


@dataclass(frozen=True)
class Recommendation:
    #: Confluent's rule: ceil(max(t/p, t/c)) from the per-partition rates; None without t
    #: (or when a rate could not be measured). This is *the* recommendation.
    by_rule: int | None
    #: Smallest swept count whose measured throughput reached t (None: none did, or no t).
    measured: int | None
    #: Swept count with the best measured end-to-end throughput.
    best: int
    #: Per-partition produce and consume MB/s the rule used (rounded to DECIMALS).
    p: float
    c: float
    text: str
    #: The target t in MB/s (None: none given).
    target: float | None = None
    #: The swept count p and c were measured at (the smallest one).
    measured_at: int = 1

    @property
    def partitions(self) -> int | None:
        return self.by_rule

    @property
    def t_over_p(self) -> float | None:
        return round(self.target / self.p, DECIMALS) if self.target and self.p else None

    @property
    def t_over_c(self) -> float | None:
        return round(self.target / self.c, DECIMALS) if self.target and self.c else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.by_rule,
            "rule": "ceil(max(t/p, t/c))",
            "target_mb_per_sec": self.target,
            "produce_mb_per_sec_per_partition": self.p,
            "consume_mb_per_sec_per_partition": self.c,
            "t_over_p": self.t_over_p,
            "t_over_c": self.t_over_c,
            "per_partition_measured_at": self.measured_at,
            "by_rule": self.by_rule,
            "measured": self.measured,
            "best_measured": self.best,
            "text": self.text,
        }


@dataclass
class SweepResult:
    points: list[SweepPoint] = field(default_factory=list)
    consumers: int = 1
    record_size: int = 0
    records: int = 0
    #: Stopped (``stop`` set) before every count was measured: ``points`` holds the counts
    #: measured in full before the stop (maybe none).
    partial: bool = False

    def recommend(self, target_mb_s: float | None = None) -> Recommendation:
        """The partition count for ``target_mb_s`` by Confluent's rule, from this sweep's own
        measurements: p and c are the produce and consume MB/s per partition at the smallest
        count swept (one partition when swept, which is what the rule asks for)."""
        if not self.points:
            raise ValueError("empty sweep")
        base = min(self.points, key=lambda pt: pt.partitions)
        p = round(base.produce.mb_per_sec / base.partitions, DECIMALS)
        c = round(base.consume.mb_per_sec / base.partitions, DECIMALS)
        best = max(self.points, key=lambda pt: pt.mb_per_sec)
        best_mb = round(best.mb_per_sec, DECIMALS)
        at = "" if base.partitions == 1 else f" per partition at {_partitions(base.partitions)}"
        rates = f"p = {p} MB/s produce, c = {c} MB/s consume{at or ' on 1 partition'}"
        if target_mb_s is None:
            text = (
                f"best measured: {_partitions(best.partitions)} ({best_mb} MB/s end to end); "
                f"{rates}; give a target throughput (-t MB/s) for a recommendation"
            )
            return Recommendation(None, None, best.partitions, p, c, text, None, base.partitions)
        t = float(target_mb_s)
        by_rule = rule_partitions(t, p, c)
        reached = [pt.partitions for pt in self.points if pt.mb_per_sec >= t]
        measured = min(reached) if reached else None
        if by_rule is None:
            text = (
                f"no recommendation: {rates}, so max(t/p, t/c) is undefined (too few records "
                "to measure? raise --num-records)"
            )
            return Recommendation(None, measured, best.partitions, p, c, text, t, base.partitions)
        tp, tc = round(t / p, DECIMALS), round(t / c, DECIMALS)
        text = (
            f"recommended: {_partitions(by_rule)} = ceil(max(t/p, t/c)) = ceil(max({t:g}/{p}, "
            f"{t:g}/{c})) = ceil(max({tp}, {tc})), with {rates}"
        )
        if measured is not None:
            text += f"; measured: {_partitions(measured)} reached {t:g} MB/s"
        else:
            text += (
                f"; no swept count reached {t:g} MB/s (best {best_mb} MB/s at "
                f"{best.partitions}): the cluster or the clients are the limit, not the "
                "partition count"
            )
        if self.consumers < by_rule:
            text += f"; run at least {by_rule} consumers to use them"
        text += "; adding partitions later remaps keys, so size with headroom"
        return Recommendation(by_rule, measured, best.partitions, p, c, text, t, base.partitions)

    def to_dict(self, target_mb_s: float | None = None) -> dict[str, Any]:
        return {
            "records": self.records,
            "record_size": self.record_size,
            "consumers": self.consumers,
            "target_mb_per_sec": target_mb_s,
            "points": [pt.to_dict() for pt in self.points],
            "recommendation": self.recommend(target_mb_s).to_dict() if self.points else None,
            "partial": self.partial,
        }


def _partitions(n: int) -> str:
    return f"{n} partition{'s' * (n != 1)}"


def sweep(
    target: ClientSettings | str,
    partition_counts: Sequence[int],
    *,
    records: int,
    record_size: int = 1024,
    consumers: int = 1,
    acks: str = "all",
    batch_size: int | None = None,
    linger_ms: float | None = None,
    compression: str | None = None,
    keep_topics: bool = False,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> SweepResult:
    """For each count: create a fresh topic, produce ``records`` as fast as possible, read them
    back with ``consumers`` consumers, delete the topic (unless ``keep_topics``).

    ``stop`` set (e.g. by a SIGTERM handler) ends the sweep early: the count being measured
    is dropped (its topic deleted) and the result holds the counts measured so far, marked
    ``partial``."""
    settings = ClientSettings.of(target)
    counts = sorted(set(partition_counts))
    if not counts or counts[0] < 1:
        raise KopsClientError("partition counts must be >= 1")
    result = SweepResult(consumers=consumers, record_size=record_size, records=records)
    run_id = uuid.uuid4().hex[:8]
    for n in counts:
        if stop is not None and stop.is_set():
            result.partial = True
            break
        topic = f"kops-bench-{run_id}-p{n}"
        topics_admin.create_topic(settings, topic, n)
        try:

            def phase(name: str, done: int, total: int, n: int = n) -> None:
                if progress is not None:
                    progress(f"{n} partitions: {name}", done, total)

            produced = bench_produce(
                settings,
                topic,
                records=records,
                record_size=record_size,
                acks=acks,
                batch_size=batch_size,
                linger_ms=linger_ms,
                compression=compression,
                progress=phase,
                stop=stop,
            )
            if produced.partial:
                result.partial = True
                break
            if produced.errors:
                raise KopsClientError(
                    f"{produced.errors} records failed while producing to {topic}: "
                    f"{produced.first_error}"
                )
            consumed = bench_consume(
                settings,
                topic,
                records=produced.records,
                consumers=consumers,
                progress=phase,
                stop=stop,
            )
            if consumed.partial:
                result.partial = True
                break
            result.points.append(SweepPoint(n, produced, consumed))
        finally:
            if not keep_topics:
                topics_admin.delete_topic(settings, topic)
    return result


def plot_sweep(result: SweepResult, path: str, target_mb_s: float | None = None) -> Recommendation:
    """Write a PNG: MB/s (produce, consume, end to end) and p99 latency (produce, consume)
    against partitions, the target and the recommended count marked. Returns the
    recommendation it marked: the same :meth:`SweepResult.recommend` the text and JSON show.
    Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KopsClientError(
            "plotting needs matplotlib: pip install matplotlib", code="MISSING_DEPENDENCY"
        ) from None
    rec = result.recommend(target_mb_s)
    pts = result.points
    xs = [pt.partitions for pt in pts]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    top.plot(xs, [pt.produce.mb_per_sec for pt in pts], marker="o", label="produce")
    top.plot(xs, [pt.consume.mb_per_sec for pt in pts], marker="s", label="consume")
    top.plot(xs, [pt.mb_per_sec for pt in pts], marker="^", linestyle=":", label="end to end")
    if target_mb_s is not None:
        top.axhline(target_mb_s, linestyle="--", color="grey", label=f"target {target_mb_s:g} MB/s")
    top.set_ylabel("MB/s")
    top.set_title(
        f"throughput and p99 latency vs partitions ({result.record_size} B records, "
        f"{result.consumers} consumer{'s' * (result.consumers != 1)})",
        fontsize=10,
    )

    def p99(bench: BenchResult) -> float:
        return bench.latency.p99 if bench.latency is not None else math.nan

    bottom.plot(xs, [p99(pt.produce) for pt in pts], marker="o", label="produce p99")
    bottom.plot(xs, [p99(pt.consume) for pt in pts], marker="s", label="consume p99")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("partitions")
    ticks = sorted(set(xs) | ({rec.by_rule} if rec.by_rule else set()))
    for ax in (top, bottom):
        if rec.by_rule is not None:
            ax.axvline(rec.by_rule, color="tab:red", linestyle="-.", alpha=0.8,
                       label=f"recommended: {_partitions(rec.by_rule)}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if rec.by_rule is not None:
        fig.text(
            0.5,
            0.005,
            f"ceil(max(t/p, t/c)) = ceil(max({rec.t_over_p}, {rec.t_over_c})) = {rec.by_rule}"
            f"  (p = {rec.p}, c = {rec.c} MB/s per partition)",
            ha="center",
            fontsize=8,
        )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rec
