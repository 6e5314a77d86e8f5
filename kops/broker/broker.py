"""The broker: composes storage, the topic registry, partitions and the server.

Handlers reach Kafka state only through this object's methods (the
`BrokerApi` protocol in kops.broker.handlers), and through Partition for a
partition's data; it knows nothing of request or response structs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.metadata import PartitionInfo
from kops.broker.cluster.partition import Partition, TopicPartition
from kops.broker.cluster.topics import (
    TopicError,
    TopicRecord,
    TopicRegistry,
    topic_name_error,
)
from kops.broker.cluster.voters import METADATA_LOG_DIR, QuorumError, parse_voters
from kops.broker.config import BrokerConfig, ConfigError, validate_topic_config
from kops.broker.dispatch import Dispatcher
from kops.broker.dynamic_config import DynamicConfigError, DynamicConfigStore
from kops.broker.groups.coordinator import GroupCoordinator
from kops.broker.groups.storage import OFFSETS_TOPIC
from kops.broker.handlers import BrokerEndpoint
from kops.broker.housekeeping import housekeeping_tasks
from kops.broker.identity import MAX_NODE_IDS, ProducerIds, load_cluster_id
from kops.broker.log import LogConfig, LogManager
from kops.broker.metrics import BrokerMetrics
from kops.broker.purgatory import Purgatory
from kops.broker.server import FrameServer, Peer
from kops.broker.topic_admin import (
    LocalTopicAdmin,
    TopicAdmin,
    checked_topic_configs,
    merged_configs,
)
from kops.broker.txn.coordinator import TransactionCoordinator
from kops.broker.txn.log import TRANSACTION_STATE_TOPIC
from kops.broker.txn.marker_io import MarkerChannel

if TYPE_CHECKING:
    from kops.broker.cluster.control import ClusterControl
    from kops.broker.cluster.hosting import ImageTopics
    from kops.broker.cluster.member import ClusterMember
    from kops.broker.cluster.member_partitions import MemberPartitions
    from kops.broker.cluster.quorum import QuorumDriver
    from kops.broker.coordinators import CoordinatorTopics

__all__ = ["DEFAULT_DATA_DIR", "Broker", "TopicError"]

log = logging.getLogger("kops.broker")

DEFAULT_DATA_DIR = Path(os.environ.get("KOPS_DATA_DIR", "~/.local/share/kops/broker")).expanduser()


def now_ms() -> int:
    return int(time.time() * 1000)


class Broker:
    def __init__(
        self,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        *,
        host: str = "127.0.0.1",
        port: int = 9092,
        advertise: tuple[str, int] | None = None,
        config: Mapping[str, str] | None = None,
        metrics: tuple[str, int] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = BrokerConfig(config)
        self.node_id = self.config.node_id
        self._host = host
        self._port = port
        self._advertise = advertise
        self.cluster_id = ""
        # The topics as this broker knows them: its own registry alone, or the
        # cluster's metadata image (then `_registry` is None).
        self.topics: TopicRegistry | ImageTopics
        self._registry: TopicRegistry | None = None
        # CreateTopics and the other topic changes: decided here, or by the controller.
        self.admin: TopicAdmin = LocalTopicAdmin(self)
        # Cluster mode: opens, leads and follows partitions as the metadata says.
        self.hosting: MemberPartitions | None = None
        # Cluster mode: FindCoordinator's lookups, creating the internal topics.
        self._coordinator_topics: CoordinatorTopics | None = None
        self.logs: LogManager
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._server: FrameServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Fetches waiting for min.bytes, keyed by the partitions they read.
        self.fetches: Purgatory[TopicPartition] = Purgatory("fetch", batch_events=True)
        # acks=all produces waiting for followers, keyed by the partitions they wrote.
        self.produces: Purgatory[TopicPartition] = Purgatory("produce")
        # Set at start, before groups load, so requests meanwhile get
        # COORDINATOR_LOAD_IN_PROGRESS; None before (COORDINATOR_NOT_AVAILABLE).
        self.groups: GroupCoordinator | None = None
        # Set at start; in a cluster it serves the ids of the `__transaction_state`
        # partitions this broker leads.
        self.transactions: TransactionCoordinator | None = None
        # Always kept (it costs nothing unscraped); served over HTTP only when
        # `metrics` names an address (port 0: a free one, see metrics.url).
        self.metrics = BrokerMetrics()
        self._metrics_address = metrics
        voters = self.config.get("controller.quorum.voters") or ""
        # Parsed here so a bad setting fails before anything starts (QuorumError).
        self._voters = parse_voters(voters) if voters.strip() else None
        if self._voters is not None and not 0 <= self.node_id < MAX_NODE_IDS:
            raise QuorumError(f"node.id {self.node_id} is outside 0..{MAX_NODE_IDS - 1}")
        if self._voters is not None and self.node_id not in self._voters:
            raise QuorumError(
                f"node.id {self.node_id} is not among the voters {sorted(self._voters)}"
            )
        # Its quorum vote, metadata image and membership; None for a single broker.
        self.member: ClusterMember | None = None

    # ---- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_id = load_cluster_id(self.data_dir, self.node_id, self._voters)
        self.logs = LogManager(
            self.data_dir,
            checkpoint_interval_ms=self.config.int("log.flush.offset.checkpoint.interval.ms"),
        )
        self.dynamic_configs = DynamicConfigStore(
            self.data_dir / "dynamic-broker-configs.json", self.node_id
        )
        self.config.set_dynamic(
            self.dynamic_configs.cluster_default, self.dynamic_configs.per_broker
        )
        self._producer_ids = ProducerIds(
            self.data_dir, self.node_id, clustered=self._voters is not None
        )
        if self._voters is None:
            self.topics = self._registry = TopicRegistry(self.data_dir / "kops-topics.json")
            for record in self.topics:
                for index in range(record.partitions):
                    self.open_partition(record, index)
            self.drop_orphan_logs()
        # else: partitions open as the cluster's metadata image assigns them (self.hosting).
        dispatcher = Dispatcher(self, self.metrics.requests)
        self._server = FrameServer(
            dispatcher.handle_frame,
            self._host,
            self._port,
            max_frame_bytes=self.config.int("socket.request.max.bytes"),
            on_close=self._connection_closed,
        )
        await self._server.start()
        if self._voters is not None:
            # Imported here: a single broker never loads the Raft stack.
            from kops.broker.cluster.member import ClusterMember
            from kops.broker.cluster.member_partitions import MemberPartitions
            from kops.broker.cluster.topic_changes import ClusterTopicAdmin
            from kops.broker.coordinators import CoordinatorTopics

            self.member = ClusterMember(
                self.node_id,
                self._voters,
                self.data_dir / METADATA_LOG_DIR,
                self.cluster_id,
                self.config,
                self.advertised,
            )
            self.hosting = MemberPartitions(self.node_id, self, self.member, self.config)
            self.topics = self.hosting.topics
            self.member.control.on_image = self.hosting.apply
            self.admin = ClusterTopicAdmin(
                self.node_id, self.config, self.member.control, self._voters
            )
            self._coordinator_topics = CoordinatorTopics(self.member, self.admin, self.config)
        self._tasks += housekeeping_tasks(self.logs, self.config)
        self.groups = GroupCoordinator(self)
        await self.groups.start(own_all=self.member is None)
        channel = (
            MarkerChannel(self.node_id, self.hosting.endpoint) if self.hosting is not None else None
        )
        self.transactions = TransactionCoordinator(self, channel)
        await self.transactions.start(own_all=self.member is None)
        if self.member is not None and self.hosting is not None:
            # After the coordinators exist: the first images elect their partitions.
            await self.member.start()
            self.hosting.start()
        self.metrics.attach(self, asyncio.get_running_loop())
        if self._metrics_address is not None:
            try:
                self.metrics.serve(*self._metrics_address)
            except OSError:
                await self.stop()
                raise

    async def stop(self) -> None:
        if self.metrics.port is None:
            self.metrics.close()
        else:
            # Off the loop: shutting the HTTP server down waits for its poll, and a
            # scrape in progress waits for the loop.
            await asyncio.to_thread(self.metrics.close)
        await cancel_and_wait(self._tasks)
        if self._coordinator_topics is not None:
            await cancel_and_wait(self._coordinator_topics.tasks())
        if self.member is not None:
            await self.member.stop()
        if self.hosting is not None:
            await self.hosting.stop()
        await self.admin.close()
        if self.transactions is not None:
            await self.transactions.stop()
        if self.groups is not None:
            await self.groups.stop()
        if self._server is not None:
            await self._server.stop()
        self.fetches.cancel_all()
        self.produces.cancel_all()
        self.logs.close()

    @property
    def quorum(self) -> QuorumDriver | None:
        return None if self.member is None else self.member.quorum

    @property
    def cluster(self) -> ClusterControl | None:
        return None if self.member is None else self.member.control

    def cluster_brokers(self, include_fenced: bool = False) -> list[BrokerEndpoint]:
        host, port = self.advertised
        own = BrokerEndpoint(self.node_id, host, port)
        if self.member is None:
            return [own]
        brokers = {
            b.broker_id: BrokerEndpoint(b.broker_id, b.host, b.port, b.fenced)
            for b in self.member.control.image.brokers.values()
            if include_fenced or not b.fenced
        }
        brokers.setdefault(self.node_id, own)
        return [brokers[node] for node in sorted(brokers)]

    @property
    def controller_id(self) -> int:
        if self.member is None:
            return self.node_id
        leader = self.member.quorum.leader_id
        return -1 if leader is None else leader

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def advertised(self) -> tuple[str, int]:
        if self._advertise is not None:
            host, port = self._advertise
            return host, port or self.port
        host = self._host if self._host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return host, self.port

    # ---- what handlers and the coordinator ask -----------------------------
    def partition(self, topic: str, index: int) -> Partition | None:
        return self._partitions.get((topic, index))

    def topic(self, name: str) -> TopicRecord | None:
        return self.topics.get(name)

    def topic_names(self) -> list[str]:
        return [record.name for record in self.topics]

    def coordinator(self, key: str | None = None) -> GroupCoordinator | None:
        """The group coordinator for a group id, or this broker's (key None).

        On one broker both are this broker's; None before it is created.
        """
        return self.groups

    def partitions_of(self, topic: str) -> list[Partition]:
        """The topic's partitions this broker hosts (in a cluster, maybe not all of them)."""
        record = self.topics.get(topic)
        if record is None:
            return []
        hosted = (self._partitions.get((topic, i)) for i in range(record.partitions))
        return [p for p in hosted if p is not None]

    def leader_partition(
        self, topic: str, index: int, current_leader_epoch: int = -1
    ) -> Partition | ErrorCode:
        """The partition if this broker leads it (what clients produce to and read from),
        else why not, in Kafka's order: no such partition, the client's leader epoch
        (KIP-320) against this replica's, then NOT_LEADER_OR_FOLLOWER."""
        partition = self._partitions.get((topic, index))
        if partition is None:
            record = self.topics.get(topic)
            if record is None or not 0 <= index < record.partitions:
                return ErrorCode.unknown_topic_or_partition
            return ErrorCode.not_leader_or_follower
        if code := partition.check_leader_epoch(current_leader_epoch):
            return code
        if partition.leader != self.node_id:
            return ErrorCode.not_leader_or_follower
        return partition

    async def replicated(self, topic: str, index: int, timeout: float) -> ErrorCode:
        """Wait until everything now in the partition's log is committed (its high
        watermark reached today's log end): the broker's own writes, such as offset
        commits, are acknowledged only then, as acks=all would be."""
        partition = self._partitions.get((topic, index))
        if partition is None:
            return ErrorCode.not_leader_or_follower
        return await partition.wait_committed(partition.log_end_offset - 1, self.node_id, timeout)

    def leader_of(self, topic: str, index: int) -> int | None:
        """The partition's leader as this broker knows it (hosted here or not); None
        while it has none."""
        if self.member is not None:
            info = self.member.control.image.partitions.get((topic, index))
            leader = info.leader if info is not None else -1
        else:
            partition = self._partitions.get((topic, index))
            leader = partition.leader if partition is not None else -1
        return leader if leader >= 0 else None

    def partition_states(self, topic: str) -> list[PartitionInfo]:
        """Leader, epoch, replicas and ISR of every partition of the topic, hosted here or not."""
        if self.member is not None:
            return self.member.control.image.partitions_of(topic)
        return [
            PartitionInfo(
                topic, p.index, tuple(p.replicas), tuple(p.isr), p.leader, p.leader_epoch, 0
            )
            for p in self.partitions_of(topic)
        ]

    def group_coordinator(self, key: str) -> BrokerEndpoint | ErrorCode:
        """FindCoordinator: the leader of the key's `__consumer_offsets` partition (in a
        cluster, kops.broker.coordinators; the topic is created on first use)."""
        if self._coordinator_topics is not None:
            return self._coordinator_topics.find(OFFSETS_TOPIC, key)
        groups = self.groups
        if groups is None or not groups.store.partitions:
            return ErrorCode.coordinator_not_available
        partition = self._partitions.get((OFFSETS_TOPIC, groups.store.partition_for(key)))
        if partition is None or partition.leader != self.node_id:
            return ErrorCode.coordinator_not_available
        host, port = self.advertised
        return BrokerEndpoint(self.node_id, host, port)

    def _connection_closed(self, peer: Peer) -> None:
        if self.member is not None:
            self.member.control.connection_closed(peer)

    def transaction_coordinator(self, key: str) -> BrokerEndpoint | ErrorCode:
        """FindCoordinator for a transactional id: the leader of its `__transaction_state`
        partition in a cluster, as for a group; a single broker is the coordinator of
        every id (the topic is created now, on first use)."""
        if self._coordinator_topics is not None:
            return self._coordinator_topics.find(TRANSACTION_STATE_TOPIC, key)
        if self.transactions is None:
            return ErrorCode.coordinator_not_available
        self.transactions.ensure_topic()
        host, port = self.advertised
        return BrokerEndpoint(self.node_id, host, port)

    def transaction_completed(self, index: int, producer_id: int, commit: bool) -> None:
        """A transaction's marker is in `__consumer_offsets` partition `index`."""
        if self.groups is not None:
            self.groups.transaction_completed(index, producer_id, commit)

    def effective_topic_config(self, record: TopicRecord) -> dict[str, str]:
        """The topic's settings over the broker's defaults."""
        return {**self.config.topic_defaults(), **record.configs}

    def open_partition(self, record: TopicRecord, index: int) -> Partition:
        settings = self.effective_topic_config(record)
        partition_log = self.logs.open_partition(
            record.name, index, LogConfig.from_topic_config(settings)
        )
        partition = Partition(
            record.name,
            index,
            partition_log,
            leader=self.node_id,
            replicas=list(record.replicas[index]),
            isr=[self.node_id],
            fetches=self.fetches,
            produces=self.produces,
            replica_lag_time_max_ms=self.config.int("replica.lag.time.max.ms"),
            min_insync_replicas=int(settings["min.insync.replicas"]),
        )
        partition.mark_committed_to_end()
        self._partitions[(record.name, index)] = partition
        return partition

    def remove_partition(self, topic: str, index: int) -> None:
        """Close and delete a replica this broker no longer hosts (its topic is gone, or in a
        cluster, no longer assigned here); requests parked on it are woken to hear so."""
        partition = self._partitions.pop((topic, index), None)
        if partition is not None:
            partition.wake()
        self.logs.delete_partition(topic, index)

    def drop_orphan_logs(self) -> None:
        for topic, index in self.logs.existing_partitions():
            if (topic, index) not in self._partitions:
                log.warning("removing log of unknown partition %s-%d", topic, index)
                self.logs.delete_partition(topic, index)

    # ---- topic administration -------------------------------------------
    # The synchronous operations are a single broker's (LocalTopicAdmin); in a
    # cluster every change goes through the controller (self.admin).
    def _single_registry(self) -> TopicRegistry:
        if self._registry is None:
            raise TopicError(
                ErrorCode.not_controller, "topics of a cluster change through its controller"
            )
        return self._registry

    def create_topic(
        self,
        name: str,
        num_partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
        internal: bool = False,
    ) -> TopicRecord:
        registry = self._single_registry()
        problem = topic_name_error(name)
        if problem:
            raise TopicError(ErrorCode.invalid_topic_exception, problem)
        if name in self.topics:
            raise TopicError(ErrorCode.topic_already_exists, f"topic {name!r} already exists")
        if num_partitions == -1:
            num_partitions = self.config.int("num.partitions")
        if num_partitions <= 0:
            raise TopicError(
                ErrorCode.invalid_partitions, "number of partitions must be at least 1"
            )
        if replication_factor == -1:
            replication_factor = min(1, self.config.int("default.replication.factor"))
        if replication_factor != 1:
            raise TopicError(
                ErrorCode.invalid_replication_factor,
                f"replication factor {replication_factor} is larger than the 1 available broker",
            )
        configs = dict(configs or {})
        checked_topic_configs(configs)
        record = TopicRecord(
            name=name,
            topic_id=uuid.uuid4(),
            replicas=[[self.node_id] for _ in range(num_partitions)],
            configs=configs,
            internal=internal,
        )
        if validate_only:
            return record
        registry.add(record)
        for index in range(num_partitions):
            self.open_partition(record, index)
        log.info("created topic %s with %d partitions", name, num_partitions)
        return record

    def delete_topic(self, name: str) -> None:
        registry = self._single_registry()
        record = registry.get(name)
        if record is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        if record.internal:
            raise TopicError(
                ErrorCode.invalid_topic_exception, f"cannot delete internal topic {name!r}"
            )
        registry.remove(name)
        for index in range(record.partitions):
            self.remove_partition(name, index)
        if self.groups is not None:
            # Commits for a deleted topic must not leak into a re-created one.
            self.groups.on_topic_deleted(name)
        log.info("deleted topic %s", name)

    def create_partitions(self, name: str, count: int, *, validate_only: bool = False) -> None:
        registry = self._single_registry()
        record = registry.get(name)
        if record is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        if count <= record.partitions:
            raise TopicError(
                ErrorCode.invalid_partitions,
                f"topic {name!r} has {record.partitions} partitions; the new count must be larger",
            )
        if validate_only:
            return
        old = record.partitions
        record.replicas.extend([self.node_id] for _ in range(count - old))
        registry.save()
        for index in range(old, count):
            self.open_partition(record, index)

    def topic_configs(self, name: str) -> dict[str, tuple[str, bool]]:
        """Every topic setting: value and whether it is the default."""
        record = self.topics.get(name)
        if record is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        return {
            key: (value, key not in record.configs)
            for key, value in self.effective_topic_config(record).items()
        }

    def alter_topic_configs(
        self, name: str, changes: Iterable[tuple[str, str | None]], *, validate_only: bool = False
    ) -> None:
        """Apply (key, value) changes; value None restores the default."""
        registry = self._single_registry()
        record = registry.get(name)
        if record is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        updated = merged_configs(record.configs.items(), changes)
        checked_topic_configs(updated)
        if validate_only:
            return
        record.configs = updated
        registry.save()
        self.reconfigure(record)

    def reconfigure(self, record: TopicRecord) -> None:
        """Give the topic's partitions its settings as they now are."""
        settings = self.effective_topic_config(record)
        config = LogConfig.from_topic_config(settings)
        for partition in self.partitions_of(record.name):
            partition.update_config(config, int(settings["min.insync.replicas"]))

    def alter_broker_configs(
        self,
        resource: str,
        changes: Iterable[tuple[str, str | None]],
        *,
        replace: bool = False,
        validate_only: bool = False,
    ) -> None:
        """Dynamic broker configs for this broker (`resource` its id) or every broker ("").

        DynamicConfigError if a key is read-only, a value invalid or `resource`
        another broker. The new values apply at once, topic defaults included.
        """
        store = self.dynamic_configs
        wanted = store.alter(resource, changes, replace=replace, validate_only=True)
        default = wanted if resource == "" else store.cluster_default
        per_broker = store.per_broker if resource == "" else wanted
        trial = BrokerConfig(self.config.static)
        try:
            trial.set_dynamic(default, per_broker)
            validate_topic_config(trial.topic_defaults())
        except (ConfigError, ValueError) as exc:
            raise DynamicConfigError(str(exc), error_code=ErrorCode.invalid_config) from None
        if validate_only:
            return
        store.replace(resource, wanted)
        self.config.set_dynamic(default, per_broker)
        for record in self.topics:
            self.reconfigure(record)

    def is_internal(self, name: str) -> bool:
        record = self.topics.get(name)
        return record is not None and record.internal

    async def auto_create(self, name: str) -> TopicRecord | None:
        if not self.config.bool("auto.create.topics.enable") or topic_name_error(name):
            return None
        try:
            await self.admin.create_topic(name)
        except TopicError as exc:
            if exc.error_code != ErrorCode.topic_already_exists:
                log.warning("auto-creating topic %s failed: %s", name, exc.message)
        return self.topics.get(name)

    # ---- producers -------------------------------------------------------
    def allocate_producer_id(self) -> int:
        return self._producer_ids.allocate()
