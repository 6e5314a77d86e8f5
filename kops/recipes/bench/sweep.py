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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kops import admin as topics_admin
from kops.client import ClientSettings, KopsClientError
from kops.recipes.bench.load import BenchResult, Progress, bench_consume, bench_produce

__all__ = ["Recommendation", "SweepPoint", "SweepResult", "plot_sweep", "sweep"]


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


@dataclass(frozen=True)
class Recommendation:
    #: Confluent's rule: ceil(max(t/p, t/c)) from the per-partition rates; None without t.
    by_rule: int | None
    #: Smallest swept count whose measured throughput reached t (None: none did, or no t).
    measured: int | None
    #: Swept count with the best measured end-to-end throughput.
    best: int
    #: Per-partition produce and consume MB/s the rule used.
    p: float
    c: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_rule": self.by_rule,
            "measured": self.measured,
            "best_measured": self.best,
            "produce_mb_per_sec_per_partition": round(self.p, 4),
            "consume_mb_per_sec_per_partition": round(self.c, 4),
            "text": self.text,
        }


@dataclass
class SweepResult:
    points: list[SweepPoint] = field(default_factory=list)
    consumers: int = 1
    record_size: int = 0
    records: int = 0

    def recommend(self, target_mb_s: float | None = None) -> Recommendation:
        if not self.points:
            raise ValueError("empty sweep")
        base = min(self.points, key=lambda pt: pt.partitions)
        # Per-partition rates from the smallest count measured (1 when it was swept).
        p = base.produce.mb_per_sec / base.partitions
        c = base.consume.mb_per_sec / base.partitions
        best = max(self.points, key=lambda pt: pt.mb_per_sec)
        if target_mb_s is None:
            return Recommendation(
                None,
                None,
                best.partitions,
                p,
                c,
                f"best measured: {_partitions(best.partitions)} ({best.mb_per_sec:.2f} MB/s "
                "end to end); give a target throughput for a recommendation",
            )
        by_rule = max(
            1,
            math.ceil(max(target_mb_s / p if p else math.inf, target_mb_s / c if c else math.inf)),
        )
        reached = [pt.partitions for pt in self.points if pt.mb_per_sec >= target_mb_s]
        measured = min(reached) if reached else None
        text = (
            f"by Confluent's rule max(t/p, t/c) = max({target_mb_s:g}/{p:.2f}, "
            f"{target_mb_s:g}/{c:.2f}): {_partitions(by_rule)}"
        )
        if measured is not None:
            text += f"; measured: {_partitions(measured)} reached {target_mb_s:g} MB/s"
        else:
            text += (
                f"; no swept count reached {target_mb_s:g} MB/s (best {best.mb_per_sec:.2f} "
                f"MB/s at {best.partitions}): the cluster or the clients are the limit, "
                "not the partition count"
            )
        if self.consumers < by_rule:
            text += f"; run at least {by_rule} consumers to use them"
        text += "; adding partitions later remaps keys, so size with headroom"
        return Recommendation(by_rule, measured, best.partitions, p, c, text)

    def to_dict(self, target_mb_s: float | None = None) -> dict[str, Any]:
        return {
            "records": self.records,
            "record_size": self.record_size,
            "consumers": self.consumers,
            "target_mb_per_sec": target_mb_s,
            "points": [pt.to_dict() for pt in self.points],
            "recommendation": self.recommend(target_mb_s).to_dict() if self.points else None,
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
) -> SweepResult:
    """For each count: create a fresh topic, produce ``records`` as fast as possible, read them
    back with ``consumers`` consumers, delete the topic (unless ``keep_topics``)."""
    settings = ClientSettings.of(target)
    counts = sorted(set(partition_counts))
    if not counts or counts[0] < 1:
        raise KopsClientError("partition counts must be >= 1")
    result = SweepResult(consumers=consumers, record_size=record_size, records=records)
    run_id = uuid.uuid4().hex[:8]
    for n in counts:
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
            )
            if produced.errors:
                raise KopsClientError(
                    f"{produced.errors} records failed while producing to {topic}: "
                    f"{produced.first_error}"
                )
            consumed = bench_consume(
                settings, topic, records=produced.records, consumers=consumers, progress=phase
            )
            result.points.append(SweepPoint(n, produced, consumed))
        finally:
            if not keep_topics:
                topics_admin.delete_topic(settings, topic)
    return result


def plot_sweep(result: SweepResult, path: str, target_mb_s: float | None = None) -> None:
    """Write a PNG of produce and consume MB/s against partitions (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KopsClientError(
            "plotting needs matplotlib: pip install matplotlib", code="MISSING_DEPENDENCY"
        ) from None
    xs = [pt.partitions for pt in result.points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [pt.produce.mb_per_sec for pt in result.points], marker="o", label="produce")
    ax.plot(xs, [pt.consume.mb_per_sec for pt in result.points], marker="s", label="consume")
    if target_mb_s is not None:
        ax.axhline(target_mb_s, linestyle="--", color="grey", label=f"target {target_mb_s:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("partitions")
    ax.set_ylabel("MB/s")
    ax.set_title(
        f"throughput vs partitions ({result.record_size} B records, "
        f"{result.consumers} consumer{'s' * (result.consumers != 1)})"
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
