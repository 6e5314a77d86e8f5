"""``kops doctor``: check a cluster's topics and a client config for loss, duplicates and order.

The rules are pure functions over plain data (:class:`ClusterFacts`, :class:`TopicFacts` and
a client config dict), so each is checkable without a cluster; :func:`gather` collects the
facts from any Kafka cluster through the Kafka protocol alone (Metadata and DescribeConfigs)
and :func:`diagnose` runs every rule. Each problem is a :class:`Finding` whose ``fix`` says
what to change, in Kafka's setting names.

Severity: ``error`` when data can be lost or duplicated (or a client refuses the config and
will not start); ``warning`` for reordering, unavailability, under-sized topics and limits a
small cluster imposes.

Rules (ids are stable: ``kops doctor --ignore ID`` skips one):

- ``producer-acks``: ``acks`` 0 or 1; a leader loss drops acknowledged records.
- ``producer-idempotence``: ``enable.idempotence`` off; a retried batch is written twice.
- ``producer-in-flight``: ``max.in.flight.requests.per.connection`` > 5 with retries;
  retries reorder a partition (warning), or, with idempotence on, the client refuses the
  config and does not start (error).
- ``producer-retries``: ``retries=0``; a leader change fails records instead of retrying.
- ``consumer-auto-commit``: ``enable.auto.commit=true`` (the default) committing offsets
  of records not processed yet; at-least-once processing is assumed. An error for
  librdkafka unless ``enable.auto.offset.store=false``, a warning for Java.
- ``replication-factor``: a topic with fewer than 3 replicas; a warning when the cluster
  has fewer than 3 brokers and the topic already uses them all.
- ``default-replication-factor``: broker ``default.replication.factor`` below
  min(3, brokers); topics created without one (auto-created ones too) get too few.
- ``min-insync-replicas``: ``min.insync.replicas`` < 2 with RF >= 3 (error); or >= RF,
  so one broker down (or, above RF, always) stops acks=all writes (warning).
- ``unclean-leader-election``: ``unclean.leader.election.enable=true`` on a topic or a
  broker (reported on the broker only when the topic inherits it).
- ``delay-tier-retention``: a kops delay tier topic (named by the tier template,
  ``kops.delay.{tier}`` by default) whose ``retention.ms`` is shorter than its delay.
- ``dlq-retention``: a dead-letter topic (``<topic>.dlq`` and the other names
  :func:`kops.recipes.dlq.looks_like_dlq` knows) whose ``retention.ms`` is shorter than
  the replay window (7 days by default).
- ``offsets-replication-factor``: ``__consumer_offsets`` (or, before it exists, the
  brokers' ``offsets.topic.replication.factor``) below min(3, brokers).
- ``sweep-partitions``: fewer partitions than a ``kops bench sweep`` result recommended.

Client rules use the defaults of the client library the config is for: librdkafka (every
confluent-kafka client, kcat, kops itself; ``enable.idempotence=false``,
``max.in.flight=1000000`` by default) or the Java client (3.0+: idempotence on, 5 in flight).
Producer rules run when the config has a producer setting (``acks``, ``linger.ms``...),
consumer rules when it has ``group.id`` or a consumer setting; a config with neither (only
``bootstrap.servers``, TLS, SASL) is not checked as a client.

Example::

    from kops.recipes.doctor import diagnose
    report = diagnose("127.0.0.1:9092", {"acks": "1"}, topics=["orders"])
    for f in report.findings:
        print(f.severity, f.subject, f.message, "->", f.fix)
"""

from kops.recipes.doctor.facts import (
    CONSUMER_KEYS,
    DEFAULT_DLQ_REPLAY_WINDOW,
    PRODUCER_KEYS,
    RULES,
    ClusterFacts,
    DoctorOptions,
    DoctorReport,
    Finding,
    TopicFacts,
    client_roles,
    connection_config,
    load_sweep,
    parse_properties,
    sweep_recommendation,
    tier_delay,
)
from kops.recipes.doctor.gather import diagnose, gather
from kops.recipes.doctor.rules import check, check_client, check_cluster

__all__ = [
    "CONSUMER_KEYS",
    "DEFAULT_DLQ_REPLAY_WINDOW",
    "PRODUCER_KEYS",
    "RULES",
    "ClusterFacts",
    "DoctorOptions",
    "DoctorReport",
    "Finding",
    "TopicFacts",
    "check",
    "check_client",
    "check_cluster",
    "client_roles",
    "connection_config",
    "diagnose",
    "gather",
    "load_sweep",
    "parse_properties",
    "sweep_recommendation",
    "tier_delay",
]
