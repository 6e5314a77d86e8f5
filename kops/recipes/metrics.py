"""Prometheus metrics of the recipes and the worker, defined once on the default registry.

Every recipe updates these where the event happens (the delay forwarders, the retry
wrapper, DLQ replay, fan-out, idempotent consumers; the worker's ``consumer-lag`` job sets
the lag gauges). They live on :data:`prometheus_client.REGISTRY`, so a program that uses the
kops helpers in its own consumer and calls ``prometheus_client.start_http_server(port)``
serves them as well; ``kops worker run --metrics HOST:PORT`` does that for the worker.

The names are a contract shared with the broker's metrics, the Grafana dashboard
(``examples/grafana-dashboard.json``) and the alert rules (``examples/prometheus-alerts.yml``):
:data:`WORKER_METRICS` and :data:`BROKER_METRICS` list them, and a test checks that the
dashboard and the rules name nothing else. The consumer lag gauges use kafka-lag-exporter's
names, so dashboards written for it work unchanged.

Hot loops keep the labelled child (``DELAY_FORWARDED.labels(tier="1s")``) and call ``inc``
on it: a label lookup per record costs more than the increment.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BROKER_METRICS",
    "CONSUMER_LAG",
    "CONSUMER_LAG_SECONDS",
    "DELAY_CANCELLATIONS",
    "DELAY_FORWARDED",
    "DELAY_LATENESS",
    "DELAY_PARKED",
    "DLQ_DEAD_LETTERED",
    "DLQ_REPLAYED",
    "FANOUT_ETA",
    "FANOUT_FORWARDED",
    "FANOUT_REMAINING",
    "IDEMPOTENT_DUPLICATES",
    "IDEMPOTENT_LEASES_EXPIRED",
    "RETRY_ATTEMPTS",
    "WORKER_METRICS",
    "cause_of",
]

#: Lateness is milliseconds when all is well and seconds to minutes when forwarders fall
#: behind or were down; the buckets cover both, with the alert threshold (5 s) on a bound.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

DELAY_LATENESS = Histogram(
    "kops_delay_lateness_seconds",
    "Delivery time minus due time of delayed records, at the forwarder, per tier",
    ["tier"],
    buckets=LATENESS_BUCKETS,
)
DELAY_FORWARDED = Counter(
    "kops_delay_forwarded_total",
    "Delayed records forwarded to their target or to the next tier, per tier they left",
    ["tier"],
)
DELAY_PARKED = Gauge(
    "kops_delay_parked_records",
    "Records waiting in the tier: end offset minus forwarder position, summed over the "
    "partitions this process holds",
    ["tier"],
)
DELAY_CANCELLATIONS = Counter(
    "kops_delay_cancellations_total", "Delayed records dropped because they were cancelled"
)
RETRY_ATTEMPTS = Counter(
    "kops_retry_attempts_total",
    "Retries scheduled through the retry tiers, per source topic and attempt (1 = first tier)",
    ["topic", "attempt"],
)
DLQ_DEAD_LETTERED = Counter(
    "kops_dlq_dead_lettered_total",
    "Records sent to a dead-letter topic, per original topic and exception class",
    ["topic", "cause"],
)
DLQ_REPLAYED = Counter(
    "kops_dlq_replayed_total", "Dead letters replayed (acknowledged by the target)", ["dlq"]
)
FANOUT_FORWARDED = Counter(
    "kops_fanout_forwarded_total",
    "Backlog records forwarded by a fan-out (acknowledged by the target)",
    ["source"],
)
FANOUT_REMAINING = Gauge(
    "kops_fanout_remaining_records",
    "Backlog records a fan-out has still to forward (backlog at assignment minus forwarded)",
    ["source"],
)
FANOUT_ETA = Gauge(
    "kops_fanout_eta_seconds",
    "Seconds a fan-out needs for what remains at its rate so far",
    ["source"],
)
IDEMPOTENT_DUPLICATES = Counter(
    "kops_idempotent_duplicates_skipped_total",
    "Records an idempotent consumer skipped as already done, per store namespace",
    ["store"],
)
IDEMPOTENT_LEASES_EXPIRED = Counter(
    "kops_idempotent_leases_expired_total",
    "Claims taken over after the holder's lease expired (a consumer died mid-record)",
    ["store"],
)
CONSUMER_LAG = Gauge(
    "kafka_consumergroup_group_lag",
    "Consumer group lag in records: log end offset minus committed offset",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "kafka_consumergroup_group_lag_seconds",
    "Age of the oldest record the group has not consumed (0 when caught up)",
    ["group", "topic", "partition"],
)

#: Every metric name the recipes and the worker expose, as written in PromQL (a counter's
#: ``_total``; a histogram also exposes ``_bucket``, ``_sum`` and ``_count``).
WORKER_METRICS: frozenset[str] = frozenset(
    {
        "kops_delay_lateness_seconds",
        "kops_delay_forwarded_total",
        "kops_delay_parked_records",
        "kops_delay_cancellations_total",
        "kops_retry_attempts_total",
        "kops_dlq_dead_lettered_total",
        "kops_dlq_replayed_total",
        "kops_fanout_forwarded_total",
        "kops_fanout_remaining_records",
        "kops_fanout_eta_seconds",
        "kops_idempotent_duplicates_skipped_total",
        "kops_idempotent_leases_expired_total",
        "kafka_consumergroup_group_lag",
        "kafka_consumergroup_group_lag_seconds",
    }
)

#: The broker's metrics (JMX-exporter style names, served by ``kops broker start --metrics``).
BROKER_METRICS: frozenset[str] = frozenset(
    {
        "kafka_server_brokertopicmetrics_messagesin_total",
        "kafka_server_brokertopicmetrics_bytesin_total",
        "kafka_server_brokertopicmetrics_bytesout_total",
        "kafka_network_requestmetrics_requests_total",
        "kafka_network_requestmetrics_totaltimems",
        "kafka_server_replicamanager_underreplicatedpartitions",
        "kafka_controller_kafkacontroller_offlinepartitionscount",
        "kafka_controller_kafkacontroller_activecontrollercount",
        "kafka_server_replicamanager_isrshrinks_total",
        "kafka_server_replicamanager_isrexpands_total",
        "kafka_coordinator_group_groupmetadatamanager_rebalances_total",
        "kafka_coordinator_group_groupmetadatamanager_numgroups",
        "kafka_log_log_size",
        "kafka_server_delayedoperationpurgatory_purgatorysize",
    }
)


def cause_of(exc: BaseException) -> str:
    """The ``cause`` label of a dead letter: the exception's class name, without its module
    (the DLQ headers keep the full name; a label stays short and stable across refactors)."""
    return type(exc).__qualname__
