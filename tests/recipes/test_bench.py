"""Load tests: latency statistics, produce/consume benches and the partition-count sweep."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import pytest

from kops import admin
from kops.recipes.bench import BenchResult, LatencyStats, bench_consume, bench_produce
from kops.recipes.bench.sweep import (
    SweepPoint,
    SweepResult,
    plot_sweep,
    rule_partitions,
    sweep,
)
from kops.testing import wait_until

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


def test_rule_from_fixed_measurements() -> None:
    # Fixed measurements: at 1 partition, produce 7.5 MB/s, consume 12 MB/s.
    result = SweepResult([_point(1, 7.5, 12), _point(2, 14, 22), _point(4, 26, 40)], consumers=4)
    rec = result.recommend(target_mb_s=40)
    # max(40/7.5, 40/12) = max(5.333, 3.333) -> rounded up: 6.
    assert (rec.p, rec.c, rec.t_over_p, rec.t_over_c) == (7.5, 12, 5.333, 3.333)
    assert rec.partitions == rec.by_rule == 6 == rule_partitions(40, 7.5, 12)
    # No swept count reached 40 MB/s end to end (the best, 4 partitions, did 26): said too.
    assert rec.measured is None and "no swept count reached 40 MB/s" in rec.text
    assert rec.text.startswith("recommended: 6 partitions = ceil(max(t/p, t/c))")
    assert "ceil(max(40/7.5, 40/12.0)) = ceil(max(5.333, 3.333))" in rec.text
    # Consume-bound: c is the smaller rate, so t/c decides.
    assert rule_partitions(10, 5, 2) == 5 and rule_partitions(10, 2.5, 5) == 4
    assert rule_partitions(0.5, 10, 10) == 1  # at least one partition
    assert rule_partitions(10, 0, 5) is None  # an unmeasured rate gives no number
    # Measured at 2 partitions only: per-partition rates are half of what 2 partitions did.
    rec2 = SweepResult([_point(2, 9, 5)], consumers=1).recommend(target_mb_s=10)
    assert (rec2.p, rec2.c, rec2.measured_at, rec2.by_rule) == (4.5, 2.5, 2, 4)
    assert "per partition at 2 partitions" in rec2.text


def test_recommendation_json_and_text_carry_the_same_figures() -> None:
    result = SweepResult([_point(1, 3.14159, 2.71828), _point(2, 6, 5)], consumers=2)
    data = result.to_dict(target_mb_s=20)["recommendation"]
    # JSON figures are the rounded ones the rule used: recomputing from them gives the count.
    p, c = data["produce_mb_per_sec_per_partition"], data["consume_mb_per_sec_per_partition"]
    assert (p, c) == (3.142, 2.718)
    assert data["partitions"] == math.ceil(max(20 / p, 20 / c)) == 8
    assert (data["t_over_p"], data["t_over_c"]) == (round(20 / p, 3), round(20 / c, 3))
    text = data["text"]
    assert f"recommended: {data['partitions']} partitions" in text
    assert f"{data['t_over_p']}, {data['t_over_c']}" in text and f"p = {p} MB/s" in text
    assert text == result.recommend(20).text


def test_plot_writes_a_png_and_marks_the_recommendation(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    result = SweepResult([_point(1, 10, 4), _point(2, 20, 8)], consumers=2)
    marked = plot_sweep(result, str(path), 12)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert marked == result.recommend(12) and marked.partitions == 3


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
    # acks=1 on a replicated topic: the records count once the followers have them.
    wait_until(lambda: admin.describe_topic(kafka_broker, topic).total_records == 300, 30)

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
    def sweep_topics() -> set[str]:
        # Its own topics only: other tests may share the cluster (KOPS_TEST_BOOTSTRAP).
        return {t.name for t in admin.list_topics(kafka_broker) if t.name.startswith("kops-bench-")}

    before = sweep_topics()
    result = sweep(kafka_broker, [2, 1], records=200, record_size=256, consumers=2)
    assert [pt.partitions for pt in result.points] == [1, 2]
    for pt in result.points:
        assert pt.produce.records == pt.consume.records == 200
        assert pt.produce.partitions == pt.consume.partitions == pt.partitions
        assert pt.mb_per_sec > 0
    assert result.recommend(target_mb_s=1).by_rule is not None
    assert sweep_topics() == before  # topics cleaned up


def test_pacer_spaces_records_evenly_from_the_first() -> None:
    from kops.recipes.pacing import Pacer

    now = [100.0]
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(round(seconds, 6))
        now[0] += seconds

    pacer = Pacer(4, wait=wait, slice_s=10, clock=lambda: now[0])  # 4 per second
    for _ in range(5):
        pacer.pace()
    # Record i leaves at start + i/4: the first at once, then every 0.25 s; no bursts.
    assert waits == [0.25, 0.25, 0.25, 0.25] and now[0] == 101.0 and pacer.count == 5
    unlimited = Pacer(None, wait=wait, clock=lambda: now[0])
    for _ in range(3):
        unlimited.pace()
    assert len(waits) == 4 and not unlimited.limited
