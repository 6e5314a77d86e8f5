"""Load tests: latency statistics, produce/consume benches and the partition-count sweep."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from kops import admin
from kops.recipes.bench import BenchResult, LatencyStats, bench_consume, bench_produce
from kops.recipes.bench.sweep import SweepPoint, SweepResult, plot_sweep, sweep

# --------------------------------------------------------------------------- no broker


def test_latency_percentiles_use_nearest_rank() -> None:
    stats = LatencyStats.of([float(i) for i in range(1, 1001)])  # 1..1000 ms
    assert stats is not None
    assert (stats.p50, stats.p95, stats.p99, stats.p999, stats.max) == (500, 950, 990, 999, 1000)
    assert stats.avg == pytest.approx(500.5)
    one = LatencyStats.of([7.0])
    assert one is not None and one.p50 == one.p999 == 7.0
    assert LatencyStats.of([]) is None


def _result(kind: str, mb_s: float, partitions: int) -> BenchResult:
    return BenchResult(
        kind,
        "t",
        records=1000,
        bytes=int(mb_s * 2**20),
        elapsed=1.0,  # type: ignore[arg-type]
        latency=None,
        partitions=partitions,
    )


def _point(n: int, produce: float, consume: float) -> SweepPoint:
    return SweepPoint(n, _result("produce", produce, n), _result("consume", consume, n))


def test_recommendation_follows_max_t_over_p_and_t_over_c() -> None:
    result = SweepResult(
        [_point(1, 10, 4), _point(2, 20, 8), _point(4, 35, 15), _point(8, 40, 16)], consumers=8
    )
    rec = result.recommend(target_mb_s=30)
    # p = 10 MB/s, c = 4 MB/s per partition: max(30/10, 30/4) = 7.5 -> 8.
    assert (rec.p, rec.c, rec.by_rule) == (10, 4, 8)
    assert rec.measured is None  # the best end-to-end is 16 MB/s (consume-bound)
    assert rec.best == 8
    assert "no swept count reached 30 MB/s" in rec.text

    rec = result.recommend(target_mb_s=12)
    assert (rec.by_rule, rec.measured) == (3, 4)
    assert "remaps keys" in rec.text

    rec = SweepResult([_point(2, 20, 8)], consumers=1).recommend(target_mb_s=8)
    # Per-partition rates come from the smallest count swept: p = 10, c = 4.
    assert rec.by_rule == 2 and "at least 2 consumers" in rec.text
    assert result.recommend().by_rule is None


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    plot_sweep(SweepResult([_point(1, 10, 4), _point(2, 20, 8)], consumers=2), str(path), 12)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- broker


def test_produce_then_consume_counts_and_measures(kafka_broker: str) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 3)
    phases: list[tuple[str, int, int]] = []

    produced = bench_produce(
        kafka_broker,
        topic,
        records=300,
        record_size=100,
        acks="1",
        linger_ms=1,
        progress=lambda *a: phases.append(a),
    )
    assert (produced.records, produced.bytes, produced.errors) == (300, 30_000, 0)
    assert produced.partitions == 3
    assert produced.latency is not None and 0 < produced.latency.p50 <= produced.latency.max
    assert phases[-1] == ("produce", 300, 300)
    info = admin.describe_topic(kafka_broker, topic)
    assert info.total_records == 300

    consumed = bench_consume(kafka_broker, topic, consumers=2, timeout=5)
    assert (consumed.records, consumed.bytes, consumed.consumers) == (300, 30_000, 2)
    assert consumed.latency is not None and consumed.latency.max < 60_000
    assert "300 records consumed" in consumed.summary()

    # More consumers than partitions: the extra one idles, every record is still read once.
    assert bench_consume(kafka_broker, topic, consumers=4, records=300).records == 300


def test_throttled_produce_keeps_to_the_rate(kafka_broker: str) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 1)
    started = time.monotonic()
    result = bench_produce(kafka_broker, topic, records=50, record_size=10, throughput=100)
    assert time.monotonic() - started >= 0.49
    assert result.records == 50 and result.records_per_sec <= 110


def test_sweep_measures_each_count_on_a_fresh_topic(kafka_broker: str) -> None:
    before = {t.name for t in admin.list_topics(kafka_broker)}
    result = sweep(kafka_broker, [2, 1], records=200, record_size=256, consumers=2)
    assert [pt.partitions for pt in result.points] == [1, 2]
    for pt in result.points:
        assert pt.produce.records == pt.consume.records == 200
        assert pt.produce.partitions == pt.consume.partitions == pt.partitions
        assert pt.mb_per_sec > 0
    assert result.recommend(target_mb_s=1).by_rule is not None
    assert {t.name for t in admin.list_topics(kafka_broker)} == before  # topics cleaned up
