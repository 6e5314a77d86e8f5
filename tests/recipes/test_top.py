"""``kops top``'s snapshots: rates, group lag, delay backlog, DLQ growth, worker lateness."""

from __future__ import annotations

import math
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import ClientSettings, KopsClientError
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.recipes.top import (
    TopSampler,
    histogram_quantile,
    metrics_url,
    parse_worker_metrics,
)

# --------------------------------------------------------------------------- no broker

INF = math.inf
# 10 observations: 2 at or under 0.1, 6 more up to 0.5, 1 more up to 1, 1 above 1.
BUCKETS = [(0.1, 2), (0.5, 8), (1.0, 9), (INF, 10)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.1, 0.05),  # rank 1 of 2 in the first bucket: halfway from 0 to 0.1
        (0.2, 0.1),  # rank 2: the top of the first bucket
        (0.5, 0.1 + 0.4 * 3 / 6),  # rank 5: 3 of 6 into (0.1, 0.5]
        (0.8, 0.5),  # rank 8: the top of (0.1, 0.5]
        (0.85, 0.75),  # rank 8.5: halfway into (0.5, 1]
        (0.99, 1.0),  # rank 9.9 falls in +Inf: the highest finite bound
        (0.0, 0.0),
    ],
)
def test_histogram_quantile_interpolates_like_promql(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_histogram_quantile_without_data() -> None:
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3), (1.0, 5)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, reversed(BUCKETS)) == pytest.approx(0.3)  # any order
    with pytest.raises(ValueError):
        histogram_quantile(1.5, BUCKETS)


def test_parse_worker_metrics_sums_workers_and_reads_tiers() -> None:
    page = "\n".join(
        [
            "# TYPE kops_delay_lateness_seconds histogram",
            'kops_delay_lateness_seconds_bucket{tier="5s",le="0.1"} 2.0',
            'kops_delay_lateness_seconds_bucket{tier="5s",le="0.5"} 8.0',
            'kops_delay_lateness_seconds_bucket{tier="5s",le="1.0"} 9.0',
            'kops_delay_lateness_seconds_bucket{tier="5s",le="+Inf"} 10.0',
            'kops_delay_lateness_seconds_count{tier="5s"} 10.0',
            'kops_delay_lateness_seconds_sum{tier="5s"} 4.0',
            "# TYPE kops_delay_forwarded_total counter",
            'kops_delay_forwarded_total{tier="5s"} 12.0',
            "# TYPE kops_delay_parked_records gauge",
            'kops_delay_parked_records{tier="5s"} 3.0',
            "",
        ]
    )
    one = parse_worker_metrics(page)
    assert one.lateness("5s", 0.5) == pytest.approx(0.3)
    assert one.forwarded == {"5s": 12.0} and one.parked == {"5s": 3.0}
    both = parse_worker_metrics(page)
    both.merge(one)
    assert both.lateness_count == {"5s": 20.0}
    assert both.lateness("5s", 0.5) == pytest.approx(0.3)  # same shape, twice the counts
    assert both.lateness("1m", 0.5) is None
    assert metrics_url("127.0.0.1:9400") == "http://127.0.0.1:9400/metrics"
    assert metrics_url("http://h:1/x") == "http://h:1/x"


# --------------------------------------------------------------------------- broker


def _produce(bootstrap: str, topic: str, n: int) -> None:
    failed: list[object] = []
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, f"v{i}".encode(), on_delivery=lambda err, _m: err and failed.append(err))
    assert p.flush(30) == 0
    assert failed == []


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    c = Consumer(ClientSettings(bootstrap).consumer_config(group))
    try:
        c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        c.close()


def test_snapshots_show_rates_lag_backlog_and_dlq_growth(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group, dlq = f"top-{tag}", f"top-g-{tag}", f"top-{tag}.dlq"
    tiers = DelayTiers.parse("1m", template=f"top-{tag}.delay.{{tier}}")
    n, k = 10, 4
    admin.create_topic(kafka_broker, topic, 1)
    admin.create_topic(kafka_broker, dlq, 1)
    ensure_tier_topics(kafka_broker, tiers, cancel_topic=None, stats_topic=None)
    _produce(kafka_broker, topic, n)
    _commit(kafka_broker, group, topic, k)
    _produce(kafka_broker, dlq, 1)
    delayed: list[object] = []
    p = Producer({"bootstrap.servers": kafka_broker})
    send_delayed(
        p, topic, b"later", delay=50, tiers=tiers, on_delivery=lambda e, _m: delayed.append(e)
    )
    assert p.flush(30) == 0 and delayed == [None]

    with TopSampler(kafka_broker, tiers=tiers, groups=[group]) as top:
        first = top.snapshot()
        assert first.elapsed is None
        by_topic = {t.topic: t for t in first.topics}
        assert by_topic[topic].end_offset == n and by_topic[topic].rate is None
        first_dlq = {d.topic: d for d in first.dlqs}[dlq]
        assert first_dlq.records == 1 and first_dlq.growth is None
        assert first.brokers and first.controller_id in {b.id for b in first.brokers}
        assert sum(b.controller for b in first.brokers) == 1

        _produce(kafka_broker, topic, 5)
        _produce(kafka_broker, dlq, 2)
        second = top.snapshot()

    assert second.elapsed is not None and second.elapsed > 0
    row = {t.topic: t for t in second.topics}[topic]
    assert row.end_offset == n + 5 and row.records == n + 5
    assert row.rate is not None and row.rate == pytest.approx(5 / second.elapsed)
    assert row.rate > 0
    (g,) = second.groups
    assert g.group == group and g.total_lag == n + 5 - k and g.members == 0
    assert g.status == "STOPPED"  # lagging, frozen, nobody owns the partition
    (tier,) = second.delay_tiers
    assert tier.topic == f"top-{tag}.delay.1m" and tier.backlog >= 1
    assert tier.oldest_due_ms is not None and tier.overdue_s == 0  # due in 50 s
    assert tier.lateness_p50_ms is None  # no worker metrics given
    d = {d.topic: d for d in second.dlqs}[dlq]
    assert d.records == 3 and d.growth == 2
    doc = second.to_dict()
    assert {"brokers", "topics", "groups", "delay_tiers", "dlqs", "workers"} <= set(doc)


def test_unreachable_worker_is_reported_not_raised(kafka_broker: str) -> None:
    with TopSampler(
        kafka_broker, tiers=DelayTiers.parse("1s"), groups=["none"], worker_metrics=["127.0.0.1:1"]
    ) as top:
        snap = top.snapshot()
    (w,) = snap.workers
    assert w.url == "http://127.0.0.1:1/metrics" and not w.ok and w.error


def test_unreachable_cluster_raises_one_error() -> None:
    settings = ClientSettings("127.0.0.1:1", timeout=3)
    with TopSampler(settings, groups=["x"]) as top, pytest.raises(KopsClientError):
        top.snapshot()
