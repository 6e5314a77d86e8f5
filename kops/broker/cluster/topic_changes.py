"""Topic changes on a cluster member: decided by the active controller, answered once seen here.

Any broker of a quorum takes CreateTopics, DeleteTopics, CreatePartitions and
topic config changes. The active controller decides and commits the records
itself; every other broker forwards the same Kafka request to it (so a client
never has to find the controller, as with KRaft's forwarding), retrying while
the controller role moves. The call returns once this broker's own image holds
the change, so a Metadata request right after a CreateTopics names the topic.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from kio.schema.create_partitions import v1 as create_partitions_v1
from kio.schema.create_topics import v4 as create_topics_v4
from kio.schema.delete_topics import v1 as delete_topics_v1
from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs import v0 as alter_configs_v0
from kio.schema.types import TopicName
from kio.static.primitive import i8, i16, i32, i32Timedelta

from kops.broker.cluster.control import ClusterControl
from kops.broker.cluster.controller import Controller, ControllerError
from kops.broker.cluster.hosting import INTERNAL_TOPICS
from kops.broker.cluster.metadata import MetadataImage, MetadataRecord
from kops.broker.cluster.quorum import peer_clients
from kops.broker.cluster.topics import TopicError, topic_name_error
from kops.broker.config import BrokerConfig
from kops.broker.topic_admin import checked_topic_configs, merged_configs
from kops.protocol.async_client import AsyncBrokerClient
from kops.protocol.errors import RequestError

__all__ = ["ClusterTopicAdmin"]

log = logging.getLogger("kops.broker.topics")

_TOPIC_RESOURCE = i8(2)
_SET, _DELETE = i8(0), i8(1)
_RETRY_S = 0.05

Decision = Callable[[Controller], Sequence[MetadataRecord]]
Forward = Callable[[AsyncBrokerClient, float], Awaitable[tuple[ErrorCode, str | None]]]


class ClusterTopicAdmin:
    def __init__(
        self,
        node_id: int,
        config: BrokerConfig,
        control: ClusterControl,
        voters: Mapping[int, tuple[str, int]],
        *,
        timeout: float = 10.0,
    ) -> None:
        self._node_id = node_id
        self._config = config
        self._control = control
        self._timeout = timeout
        self._clients = peer_clients(
            {n: a for n, a in voters.items() if n != node_id}, client_id=f"kops-forward-{node_id}"
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    @property
    def _image(self) -> MetadataImage:
        return self._control.image

    # ---- the operations ---------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        num_partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
    ) -> None:
        wanted = dict(configs or {})
        if (problem := topic_name_error(name)) is not None:
            raise TopicError(ErrorCode.invalid_topic_exception, problem)
        checked_topic_configs(wanted)
        if validate_only:
            if name in self._image.topics:
                raise TopicError(ErrorCode.topic_already_exists, f"topic {name!r} already exists")
            return

        def decide(controller: Controller) -> Sequence[MetadataRecord]:
            # Defaults are the controller's, as in Kafka: a forwarded -1 is resolved there.
            partitions = num_partitions
            if partitions == -1:
                partitions = self._config.int("num.partitions")
            factor = replication_factor
            if factor == -1:
                factor = self._config.int("default.replication.factor")
            return controller.create_topic(name, partitions, factor, wanted, str(uuid.uuid4()))

        async def forward(
            client: AsyncBrokerClient, timeout: float
        ) -> tuple[ErrorCode, str | None]:
            request = create_topics_v4.CreateTopicsRequest(
                topics=(
                    create_topics_v4.request.CreatableTopic(
                        name=TopicName(name),
                        num_partitions=i32(num_partitions),
                        replication_factor=i16(replication_factor),
                        assignments=(),
                        configs=tuple(
                            create_topics_v4.request.CreatableTopicConfig(name=k, value=v)
                            for k, v in sorted(wanted.items())
                        ),
                    ),
                ),
                timeout=i32Timedelta.parse(_timedelta(timeout)),
                validate_only=False,
            )
            response = await client.send(
                request, timeout=timeout, expect=create_topics_v4.CreateTopicsResponse
            )
            result = response.topics[0]
            return result.error_code, result.error_message

        await self._change(decide, forward)
        await self._seen(lambda image: name in image.topics, f"topic {name}")

    async def delete_topic(self, name: str) -> None:
        topic = self._image.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        if name in INTERNAL_TOPICS:
            raise TopicError(
                ErrorCode.invalid_topic_exception, f"cannot delete internal topic {name!r}"
            )

        async def forward(
            client: AsyncBrokerClient, timeout: float
        ) -> tuple[ErrorCode, str | None]:
            request = delete_topics_v1.DeleteTopicsRequest(
                topic_names=(TopicName(name),), timeout=i32Timedelta.parse(_timedelta(timeout))
            )
            response = await client.send(
                request, timeout=timeout, expect=delete_topics_v1.DeleteTopicsResponse
            )
            return response.responses[0].error_code, None

        await self._change(lambda controller: controller.delete_topic(name), forward)
        topic_id = topic.topic_id
        await self._seen(
            lambda image: (t := image.topics.get(name)) is None or t.topic_id != topic_id,
            f"deletion of topic {name}",
        )

    async def create_partitions(
        self, name: str, count: int, *, validate_only: bool = False
    ) -> None:
        topic = self._image.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        if count <= topic.partition_count:
            raise TopicError(
                ErrorCode.invalid_partitions,
                f"topic {name!r} has {topic.partition_count} partitions; "
                "the new count must be larger",
            )
        if validate_only:
            return

        async def forward(
            client: AsyncBrokerClient, timeout: float
        ) -> tuple[ErrorCode, str | None]:
            request = create_partitions_v1.CreatePartitionsRequest(
                topics=(
                    create_partitions_v1.request.CreatePartitionsTopic(
                        name=TopicName(name), count=i32(count), assignments=None
                    ),
                ),
                timeout=i32Timedelta.parse(_timedelta(timeout)),
                validate_only=False,
            )
            response = await client.send(
                request, timeout=timeout, expect=create_partitions_v1.CreatePartitionsResponse
            )
            result = response.results[0]
            return result.error_code, result.error_message

        await self._change(lambda controller: controller.create_partitions(name, count), forward)
        await self._seen(
            lambda image: (t := image.topics.get(name)) is not None and t.partition_count >= count,
            f"partitions of topic {name}",
        )

    async def alter_topic_configs(
        self, name: str, changes: Iterable[tuple[str, str | None]], *, validate_only: bool = False
    ) -> None:
        changes = list(changes)
        topic = self._image.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        checked_topic_configs(merged_configs(topic.configs, changes))
        if validate_only:
            return

        def decide(controller: Controller) -> Sequence[MetadataRecord]:
            # Merged with the controller's image, which may be ahead of ours.
            current = controller.image.topics.get(name)
            updated = merged_configs(current.configs if current is not None else (), changes)
            checked_topic_configs(updated)
            return controller.alter_topic_configs(name, updated)

        async def forward(
            client: AsyncBrokerClient, timeout: float
        ) -> tuple[ErrorCode, str | None]:
            request = alter_configs_v0.IncrementalAlterConfigsRequest(
                resources=(
                    alter_configs_v0.request.AlterConfigsResource(
                        resource_type=_TOPIC_RESOURCE,
                        resource_name=name,
                        configs=tuple(
                            alter_configs_v0.request.AlterableConfig(
                                name=key,
                                config_operation=_DELETE if value is None else _SET,
                                value=value,
                            )
                            for key, value in changes
                        ),
                    ),
                ),
                validate_only=False,
            )
            response = await client.send(
                request, timeout=timeout, expect=alter_configs_v0.IncrementalAlterConfigsResponse
            )
            result = response.responses[0]
            return result.error_code, result.error_message

        await self._change(decide, forward)
        expected = dict(merged_configs(topic.configs, changes))
        await self._seen(
            lambda image: (t := image.topics.get(name)) is None or dict(t.configs) == expected,
            f"configs of topic {name}",
        )

    # ---- deciding here or forwarding ----------------------------------------------------

    async def _change(self, decide: Decision, forward: Forward) -> None:
        """Have the active controller take the decision, wherever it is, within the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            remaining = deadline - loop.time()
            leader = self._control.controller_id
            try:
                if leader == self._node_id:
                    await self._control.decide(decide)
                    return
                client = self._clients.get(leader) if leader is not None else None
                if client is not None:
                    code, message = await forward(client, max(remaining, 0.1))
                    if code == ErrorCode.none:
                        return
                    if code not in (ErrorCode.not_controller, ErrorCode.request_timed_out):
                        raise TopicError(code, message or code.name)
            except ControllerError as exc:
                if exc.error_code != ErrorCode.not_controller:
                    raise TopicError(exc.error_code, exc.message) from None
            except RequestError as exc:
                log.debug("forwarding to the controller %s failed: %s", leader, exc)
            if loop.time() >= deadline:
                raise TopicError(
                    ErrorCode.request_timed_out,
                    f"no active controller took the change within {self._timeout:g} s",
                )
            # The controller role is moving: the next attempt goes to whoever has it.
            await asyncio.sleep(_RETRY_S)

    async def _seen(self, predicate: Callable[[MetadataImage], bool], what: str) -> None:
        if not await self._control.wait_for_image(predicate, self._timeout):
            # Committed, so it will arrive; the client's next metadata refresh shows it.
            log.warning("%s committed but not yet in this broker's metadata", what)


def _timedelta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)
