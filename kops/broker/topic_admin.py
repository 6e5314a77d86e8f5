"""Topic changes as the admin handlers ask for them, on one broker or through a controller.

CreateTopics, DeleteTopics, CreatePartitions and the config APIs call one
``TopicAdmin``. A single broker decides alone and at once (``LocalTopicAdmin``
over the broker's own registry); a cluster member asks the active controller
and answers once the change is in its own metadata image
(``kops.broker.cluster.topic_changes``). Either raises TopicError with the
Kafka error code to answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.config import ConfigError, validate_topic_config

__all__ = ["LocalTopicAdmin", "TopicAdmin", "checked_topic_configs", "merged_configs"]


def merged_configs(
    current: Iterable[tuple[str, str]], changes: Iterable[tuple[str, str | None]]
) -> dict[str, str]:
    """A topic's overrides after (key, value) changes; value None restores the default."""
    updated = dict(current)
    for key, value in changes:
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated


def checked_topic_configs(configs: Mapping[str, str]) -> None:
    """TopicError INVALID_CONFIG for what Kafka would refuse."""
    try:
        validate_topic_config(configs)
    except ConfigError as exc:
        raise TopicError(ErrorCode.invalid_config, str(exc)) from None


class TopicAdmin(Protocol):
    async def create_topic(
        self,
        name: str,
        num_partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
    ) -> None: ...

    async def delete_topic(self, name: str) -> None: ...

    async def create_partitions(
        self, name: str, count: int, *, validate_only: bool = False
    ) -> None: ...

    async def alter_topic_configs(
        self, name: str, changes: Iterable[tuple[str, str | None]], *, validate_only: bool = False
    ) -> None:
        """(key, value) changes; value None restores the default."""
        ...

    async def close(self) -> None: ...


class _LocalTopics(Protocol):
    """The single broker's synchronous topic operations (kops.broker.broker.Broker)."""

    def create_topic(
        self,
        name: str,
        num_partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
        internal: bool = False,
    ) -> object: ...

    def delete_topic(self, name: str) -> None: ...

    def create_partitions(self, name: str, count: int, *, validate_only: bool = False) -> None: ...

    def alter_topic_configs(
        self, name: str, changes: Iterable[tuple[str, str | None]], *, validate_only: bool = False
    ) -> None: ...


class LocalTopicAdmin:
    """One broker: every change is decided and applied here before the call returns."""

    def __init__(self, broker: _LocalTopics) -> None:
        self._broker = broker

    async def create_topic(
        self,
        name: str,
        num_partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
    ) -> None:
        self._broker.create_topic(
            name, num_partitions, replication_factor, configs, validate_only=validate_only
        )

    async def delete_topic(self, name: str) -> None:
        self._broker.delete_topic(name)

    async def create_partitions(
        self, name: str, count: int, *, validate_only: bool = False
    ) -> None:
        self._broker.create_partitions(name, count, validate_only=validate_only)

    async def alter_topic_configs(
        self, name: str, changes: Iterable[tuple[str, str | None]], *, validate_only: bool = False
    ) -> None:
        self._broker.alter_topic_configs(name, changes, validate_only=validate_only)

    async def close(self) -> None:
        return None
