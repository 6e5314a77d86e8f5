"""FindCoordinator's answers in a cluster, and the internal topics created on first use.

A group's coordinator is the leader of its `__consumer_offsets` partition, a
transactional id's the leader of its `__transaction_state` partition (the
partition is abs(javaStringHashCode(key)) % the topic's partition count), as
the metadata image names them. A topic that does not exist yet is created now,
as Kafka does, with its replication factor capped by the live brokers (rather
than refused on a small cluster), and the answer meanwhile is
COORDINATOR_NOT_AVAILABLE: the client asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.groups.storage import OFFSETS_TOPIC, OFFSETS_TOPIC_CONFIGS, partition_for
from kops.broker.handlers import BrokerEndpoint
from kops.broker.txn.log import TRANSACTION_STATE_TOPIC, TXN_STATE_TOPIC_CONFIGS

if TYPE_CHECKING:
    from kops.broker.cluster.member import ClusterMember
    from kops.broker.config import BrokerConfig
    from kops.broker.topic_admin import TopicAdmin

__all__ = ["CoordinatorTopics"]

log = logging.getLogger("kops.broker")


@dataclass(frozen=True, slots=True)
class _Internal:
    partitions_key: str
    replication_key: str
    configs: Mapping[str, str]


_INTERNAL = {
    OFFSETS_TOPIC: _Internal(
        "offsets.topic.num.partitions", "offsets.topic.replication.factor", OFFSETS_TOPIC_CONFIGS
    ),
    TRANSACTION_STATE_TOPIC: _Internal(
        "transaction.state.log.num.partitions",
        "transaction.state.log.replication.factor",
        TXN_STATE_TOPIC_CONFIGS,
    ),
}


class CoordinatorTopics:
    """A cluster member's lookups of the coordinator for a key of an internal topic."""

    def __init__(self, member: ClusterMember, admin: TopicAdmin, config: BrokerConfig) -> None:
        self._member = member
        self._admin = admin
        self._config = config
        self._creating: dict[str, asyncio.Task[None]] = {}

    def find(self, topic: str, key: str) -> BrokerEndpoint | ErrorCode:
        """The leader of `key`'s partition of internal `topic`, if it is a live broker."""
        image = self._member.control.image
        record = image.topics.get(topic)
        if record is None:
            self._create(topic)
            return ErrorCode.coordinator_not_available
        info = image.partitions.get((topic, partition_for(key, record.partition_count)))
        broker = image.brokers.get(info.leader) if info is not None else None
        if broker is None or broker.fenced:
            return ErrorCode.coordinator_not_available
        return BrokerEndpoint(broker.broker_id, broker.host, broker.port)

    def _create(self, topic: str) -> None:
        running = self._creating.get(topic)
        if running is not None and not running.done():
            return
        spec = _INTERNAL[topic]

        async def create() -> None:
            brokers = len(self._member.control.image.live_brokers())
            factor = min(self._config.int(spec.replication_key), brokers)
            try:
                await self._admin.create_topic(
                    topic,
                    self._config.int(spec.partitions_key),
                    max(1, factor),
                    spec.configs,
                )
            except TopicError as exc:
                if exc.error_code != ErrorCode.topic_already_exists:
                    log.warning("could not create %s: %s", topic, exc.message)

        self._creating[topic] = asyncio.create_task(create(), name=f"kops-create-{topic}")

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._creating.values())
