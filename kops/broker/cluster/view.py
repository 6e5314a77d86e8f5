"""What the broker's parts may ask of it: topics and partitions.

The group coordinator depends on this protocol, not on the Broker class, so
that the broker can build on its parts without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kops.broker.cluster.partition import Partition
from kops.broker.cluster.topics import TopicRecord
from kops.broker.config import BrokerConfig

__all__ = ["ClusterView"]


class ClusterView(Protocol):
    @property
    def config(self) -> BrokerConfig: ...

    @property
    def node_id(self) -> int: ...

    def partition(self, topic: str, index: int) -> Partition | None:
        """The partition, or None if this broker does not host it."""
        ...

    def partitions_of(self, topic: str) -> list[Partition]: ...

    def topic(self, name: str) -> TopicRecord | None:
        """A topic's metadata (id, partition count, replicas, configs)."""
        ...

    def topic_names(self) -> list[str]: ...

    def create_topic(
        self,
        name: str,
        num_partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
        internal: bool = False,
    ) -> TopicRecord: ...
