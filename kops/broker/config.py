"""Broker and topic settings, named and defaulted as Kafka names them.

The topic-level settings themselves (types, defaults, validation) are
catalogued in kops.broker.topic_configs.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from kops.broker.topic_configs import (
    CATALOGUE,
    LONG_MAX,
    ConfigError,
)
from kops.broker.topic_configs import (
    validate_topic_config as _validate,
)

__all__ = [
    "BROKER_DEFAULTS",
    "TOPIC_DEFAULT_SOURCES",
    "BrokerConfig",
    "ConfigError",
    "validate_topic_config",
]

BROKER_DEFAULTS: dict[str, str] = {
    "node.id": "0",
    # The controller quorum (empty: a single broker, no quorum). Timeouts are half
    # Kafka's defaults: kops clusters run on one host or a LAN.
    "controller.quorum.voters": "",
    "controller.quorum.election.timeout.ms": "500",
    "controller.quorum.fetch.timeout.ms": "1000",
    "controller.quorum.election.backoff.max.ms": "500",
    # Broker membership (Kafka: 2000 and 9000): fenced 3 s after its last heartbeat.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    # A metadata snapshot after this many bytes of new metadata records (Kafka's default).
    "metadata.log.max.record.bytes.between.snapshots": "20971520",
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "log.retention.hours": "168",
    "log.retention.bytes": "-1",
    "log.segment.bytes": str(1 << 30),
    "log.roll.hours": "168",
    "log.roll.jitter.hours": "0",
    "log.index.interval.bytes": "4096",
    "log.index.size.max.bytes": str(10 << 20),
    "log.retention.check.interval.ms": "300000",
    "log.cleanup.policy": "delete",
    "log.message.timestamp.type": "CreateTime",
    "log.message.timestamp.before.max.ms": str(LONG_MAX),
    "log.message.timestamp.after.max.ms": str(LONG_MAX),
    "log.message.timestamp.difference.max.ms": str(LONG_MAX),
    "log.message.format.version": "3.0-IV1",
    "log.message.downconversion.enable": "true",
    "log.flush.interval.messages": str(LONG_MAX),
    "log.flush.scheduler.interval.ms": str(LONG_MAX),
    "log.flush.offset.checkpoint.interval.ms": "60000",
    "log.segment.delete.delay.ms": "60000",
    "log.preallocate": "false",
    "log.local.retention.ms": "-2",
    "log.local.retention.bytes": "-2",
    "remote.log.storage.system.enable": "false",
    "compression.type": "producer",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.zstd.level": "3",
    "unclean.leader.election.enable": "false",
    # Leadership returns to a partition's first replica once it is back in the ISR.
    "auto.leader.rebalance.enable": "true",
    "leader.imbalance.check.interval.seconds": "300",
    "message.max.bytes": "1048588",
    "socket.request.max.bytes": str(100 * 1024 * 1024),
    "offsets.topic.num.partitions": "50",
    # Transactions (Kafka's defaults): the coordinator's state topic (its replication
    # factor capped by the live brokers when it is created), the longest
    # transaction.timeout.ms a producer may ask for, and how often timed-out
    # transactions are looked for and aborted.
    "transaction.state.log.num.partitions": "50",
    "transaction.state.log.replication.factor": "3",
    "transaction.max.timeout.ms": "900000",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "10000",
    # kops's own switch (no Kafka name exists): false refuses transactional producers
    # as Kafka does one its ACLs deny (TRANSACTIONAL_ID_AUTHORIZATION_FAILED), for a
    # broker that must behave like a cluster without transactions.
    "kops.transactions.enable": "true",
    # A follower that has not caught up for this long leaves the ISR (Kafka's default).
    "replica.lag.time.max.ms": "30000",
    "replica.fetch.backoff.ms": "1000",
    "replica.fetch.wait.max.ms": "500",
    "replica.fetch.max.bytes": "1048576",
    "offsets.topic.replication.factor": "3",
    "offsets.commit.timeout.ms": "5000",
    "offsets.retention.minutes": "10080",
    "offsets.retention.check.interval.ms": "600000",
    "offset.metadata.max.bytes": "4096",
    "group.initial.rebalance.delay.ms": "3000",
    "group.min.session.timeout.ms": "6000",
    "group.max.session.timeout.ms": "1800000",
    "log.cleaner.delete.retention.ms": "86400000",
    "log.cleaner.min.compaction.lag.ms": "0",
    "log.cleaner.max.compaction.lag.ms": str(LONG_MAX),
    "log.cleaner.backoff.ms": "15000",
    "log.cleaner.min.cleanable.ratio": "0.5",
}

# Topic-level settings and the broker setting each one defaults from (the
# highest-priority synonym; the full lists are in the catalogue).
TOPIC_DEFAULT_SOURCES: dict[str, str] = {
    name: definition.synonyms[0] for name, definition in CATALOGUE.items() if definition.synonyms
}

# Broker settings given in coarser units, as (ms setting, [(alternative, factor)]):
# Kafka uses the first one set, in this order.
_DERIVED_MS = (
    ("log.retention.ms", (("log.retention.minutes", 60_000), ("log.retention.hours", 3600_000))),
    ("log.roll.ms", (("log.roll.hours", 3600_000),)),
    ("log.roll.jitter.ms", (("log.roll.jitter.hours", 3600_000),)),
    ("log.flush.interval.ms", (("log.flush.scheduler.interval.ms", 1),)),
    # kops named the tombstone retention "delete.retention.ms" before it used Kafka's name.
    ("log.cleaner.delete.retention.ms", (("delete.retention.ms", 1),)),
)


# Kafka's ConfigSource values, as DescribeConfigs reports them.
SOURCE_DYNAMIC_BROKER = 2
SOURCE_DYNAMIC_DEFAULT_BROKER = 3
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5


class BrokerConfig:
    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self._static = {key: str(value) for key, value in (overrides or {}).items()}
        self._dynamic_default: dict[str, str] = {}
        self._dynamic: dict[str, str] = {}
        self._compute()

    def set_dynamic(
        self, cluster_default: Mapping[str, str], per_broker: Mapping[str, str]
    ) -> None:
        """Layer dynamic broker configs (kafka-configs --alter) over the static settings."""
        self._dynamic_default = dict(cluster_default)
        self._dynamic = dict(per_broker)
        self._compute()

    @property
    def static(self) -> dict[str, str]:
        """The settings given at start (command line, config), without dynamic ones."""
        return dict(self._static)

    def source(self, key: str) -> int:
        """Where a setting's value comes from (Kafka's ConfigSource)."""
        if key in self._dynamic:
            return SOURCE_DYNAMIC_BROKER
        if key in self._dynamic_default:
            return SOURCE_DYNAMIC_DEFAULT_BROKER
        return SOURCE_STATIC_BROKER if key in self._static else SOURCE_DEFAULT

    def _compute(self) -> None:
        given = {**self._static, **self._dynamic_default, **self._dynamic}
        # Settings the operator set: describe reports topic defaults taken from
        # them as broker configs rather than DEFAULT_CONFIG.
        self._given = frozenset(given)
        self._values = {**BROKER_DEFAULTS, **given}
        for target, alternatives in _DERIVED_MS:
            if target in given:
                continue
            source = next((a for a in alternatives if a[0] in given), None)
            source = source or next((a for a in alternatives if a[0] in self._values), None)
            if source is not None:
                key, factor = source
                self._values[target] = str(int(self._values[key]) * factor)

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def int(self, key: str) -> int:
        return int(self._values[key])

    def bool(self, key: str) -> bool:
        return self._values[key].strip().lower() == "true"

    @property
    def node_id(self) -> builtins.int:
        return int(self._values.get("broker.id", self._values["node.id"]))

    def is_set(self, key: str) -> builtins.bool:
        """Whether the operator gave `key` (rather than it being Kafka's default)."""
        return key in self._given

    def topic_default_origin(self, topic_key: str) -> str | None:
        """The broker setting the operator gave that supplies topic config
        `topic_key`'s default, or None when the default is Kafka's own."""
        definition = CATALOGUE.get(topic_key)
        synonyms = definition.synonyms if definition else ()
        return next((s for s in synonyms if s in self._given), None)

    def topic_defaults(self) -> dict[str, str]:
        """Every topic config's value on a topic that does not override it."""
        return {
            name: self._values.get(d.synonyms[0], d.default) if d.synonyms else d.default
            for name, d in CATALOGUE.items()
        }

    def items(self) -> dict[str, str]:
        return dict(self._values)


def validate_topic_config(
    config: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> None:
    """Reject unknown names and values Kafka would refuse (ConfigError: INVALID_CONFIG).

    `defaults` (BrokerConfig.topic_defaults()) lets settings be checked against
    the ones the topic does not override (min vs max compaction lag).
    """
    _validate(config, defaults)
