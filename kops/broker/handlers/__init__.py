"""One module per Kafka API. Each module opens with version notes, names the
kio classes of the versions it serves (`Request`, `Response`: unions over
versions), and ends with `API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION,
handle)`; kops.broker.dispatch builds the one API table from those.

Handlers see the broker as `BrokerApi` and a partition as
kops.broker.cluster.partition.Partition; they never reach storage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar, cast

from kio.schema.errors import ErrorCode
from kio.static.protocol import ResponsePayload

from kops.broker.cluster.metadata import PartitionInfo
from kops.broker.cluster.partition import Partition, TopicPartition
from kops.broker.cluster.topics import TopicRecord
from kops.broker.cluster.view import ClusterView
from kops.broker.groups.coordinator import GroupCoordinator
from kops.broker.purgatory import Purgatory
from kops.broker.server import Peer
from kops.protocol.messages import build, response_module, response_type

if TYPE_CHECKING:
    from kops.broker.cluster.control import ClusterControl
    from kops.broker.cluster.quorum import QuorumDriver
    from kops.broker.dynamic_config import DynamicConfigStore
    from kops.broker.topic_admin import TopicAdmin
    from kops.broker.txn.coordinator import TransactionCoordinator

__all__ = ["ApiHandler", "ApiRange", "BrokerApi", "BrokerEndpoint", "Reply", "RequestContext"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class BrokerEndpoint(NamedTuple):
    """A broker of the cluster as Metadata and DescribeCluster list it."""

    node_id: int
    host: str
    port: int
    fenced: bool = False


class BrokerApi(ClusterView, Protocol):
    """Everything a handler may ask of the broker."""

    @property
    def cluster_id(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def quorum(self) -> QuorumDriver | None:
        """The controller quorum this broker votes in; None for a single broker."""
        ...

    @property
    def cluster(self) -> ClusterControl | None:
        """The cluster metadata image and, on the quorum leader, the controller."""
        ...

    def cluster_brokers(self, include_fenced: bool = False) -> list[BrokerEndpoint]:
        """The brokers clients may use, by id; this broker always (it is serving)."""
        ...

    @property
    def controller_id(self) -> int:
        """The active controller (the quorum leader), -1 while none; a single broker's own id."""
        ...

    @property
    def advertised(self) -> tuple[str, int]: ...

    @property
    def fetches(self) -> Purgatory[TopicPartition]:
        """Fetches parked until min.bytes are ready, keyed by topic-partition."""
        ...

    @property
    def produces(self) -> Purgatory[TopicPartition]:
        """acks=all produces parked until the high watermark passes them."""
        ...

    def coordinator(self, key: str | None = None) -> GroupCoordinator | None:
        """The group coordinator for group id `key` (None: this broker's own),
        or None while there is none (clients retry COORDINATOR_NOT_AVAILABLE)."""
        ...

    @property
    def admin(self) -> TopicAdmin:
        """Topic changes, decided here or (in a cluster) by the active controller."""
        ...

    async def auto_create(self, name: str) -> TopicRecord | None: ...

    def is_internal(self, name: str) -> bool: ...

    def leader_partition(
        self, topic: str, index: int, current_leader_epoch: int = -1
    ) -> Partition | ErrorCode:
        """The partition if this broker leads it, else the error code to answer."""
        ...

    async def replicated(self, topic: str, index: int, timeout: float) -> ErrorCode:
        """Wait until the partition's high watermark reaches its current log end."""
        ...

    def partition_states(self, topic: str) -> list[PartitionInfo]:
        """Every partition's leader, epoch, replicas and ISR, hosted here or not."""
        ...

    def group_coordinator(self, key: str) -> BrokerEndpoint | ErrorCode:
        """FindCoordinator's answer for a group id."""
        ...

    def transaction_coordinator(self, key: str) -> BrokerEndpoint | ErrorCode:
        """FindCoordinator's answer for a transactional id."""
        ...

    def topic_configs(self, name: str) -> dict[str, tuple[str, bool]]: ...

    def alter_broker_configs(
        self,
        resource: str,
        changes: Iterable[tuple[str, str | None]],
        *,
        replace: bool = False,
        validate_only: bool = False,
    ) -> None:
        """Dynamic broker configs; DynamicConfigError when refused."""
        ...

    @property
    def dynamic_configs(self) -> DynamicConfigStore: ...

    def allocate_producer_id(self) -> int: ...

    @property
    def transactions(self) -> TransactionCoordinator | None:
        """The transaction coordinator (in a cluster, of the ids whose
        `__transaction_state` partition this broker leads); None before it starts."""
        ...

    def transaction_completed(self, index: int, producer_id: int, commit: bool) -> None:
        """A marker reached `__consumer_offsets` partition `index`: the group
        coordinator commits or drops the producer's pending offsets there."""
        ...


@dataclass(frozen=True, slots=True)
class ApiRange:
    key: int
    min_version: int
    max_version: int


@dataclass(slots=True)
class RequestContext:
    broker: BrokerApi
    api_key: int
    api_version: int
    client_id: str | None
    peer: Peer
    # The served API table (ApiVersions answers from it).
    apis: Mapping[int, ApiRange]

    @property
    def schema(self) -> ModuleType:
        """The kio module of this request's response version (nested classes live there)."""
        return response_module(self.api_key, self.api_version)

    def make(self, class_name: str, **values: Any) -> Any:
        """Build a nested response entity of this version, ignoring fields it lacks.

        Any: the class is looked up by name in this version's kio module; the
        handler fills one superset of fields for every version it serves.
        """
        return build(getattr(self.schema, class_name), **values)


class Reply(Generic[Resp]):
    """Builds a handler's top-level response for the request's version.

    kio has one response class per version; `Resp` is their union, the type
    the handler returns. Fields a version lacks are dropped.
    """

    __slots__ = ("api_key",)

    def __init__(self, api_key: int) -> None:
        self.api_key = api_key

    def __call__(self, ctx: RequestContext, **values: object) -> Resp:
        # The dispatcher only calls a handler for a version it serves, so the
        # class chosen at run time is one of the members of Resp.
        return cast(Resp, build(response_type(self.api_key, ctx.api_version), **values))


@dataclass(frozen=True, slots=True)
class ApiHandler(Generic[Req]):
    """What a handler module declares: its API key, the versions it serves, its handler."""

    key: int
    min_version: int
    max_version: int
    handle: Callable[[RequestContext, Req], Awaitable[ResponsePayload | None]]

    @property
    def range(self) -> ApiRange:
        return ApiRange(self.key, self.min_version, self.max_version)
