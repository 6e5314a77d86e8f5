"""The broker: composes storage, the topic registry, partitions and the server.

Handlers reach Kafka state only through this object's methods (the
`BrokerApi` protocol in kops.broker.handlers), and through Partition for a
partition's data; it knows nothing of request or response structs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.partition import Partition, TopicPartition
from kops.broker.cluster.topics import TopicError, TopicRecord, TopicRegistry, topic_name_error
from kops.broker.cluster.voters import METADATA_LOG_DIR, QuorumError, parse_voters
from kops.broker.config import BrokerConfig, ConfigError, validate_topic_config
from kops.broker.dispatch import Dispatcher
from kops.broker.dynamic_config import DynamicConfigError, DynamicConfigStore
from kops.broker.groups.coordinator import GroupCoordinator
from kops.broker.handlers import BrokerEndpoint
from kops.broker.housekeeping import compact_all_async
from kops.broker.log import LogConfig, LogManager
from kops.broker.metrics import BrokerMetrics
from kops.broker.purgatory import Purgatory
from kops.broker.server import FrameServer

if TYPE_CHECKING:
    from kops.broker.cluster.control import ClusterControl
    from kops.broker.cluster.member import ClusterMember
    from kops.broker.cluster.quorum import QuorumDriver

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
        self.topics: TopicRegistry
        self.logs: LogManager
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._server: FrameServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._next_producer_id = 0
        self._producer_id_ceiling = 0
        # Fetches waiting for min.bytes, keyed by the partitions they read.
        self.fetches: Purgatory[TopicPartition] = Purgatory("fetch", batch_events=True)
        # Set at start, before groups load, so requests meanwhile get
        # COORDINATOR_LOAD_IN_PROGRESS; None before (COORDINATOR_NOT_AVAILABLE).
        self.groups: GroupCoordinator | None = None
        # Always kept (it costs nothing unscraped); served over HTTP only when
        # `metrics` names an address (port 0: a free one, see metrics.url).
        self.metrics = BrokerMetrics()
        self._metrics_address = metrics
        voters = self.config.get("controller.quorum.voters") or ""
        # Parsed here so a bad setting fails before anything starts (QuorumError).
        self._voters = parse_voters(voters) if voters.strip() else None
        if self._voters is not None and self.node_id not in self._voters:
            raise QuorumError(
                f"node.id {self.node_id} is not among the voters {sorted(self._voters)}"
            )
        # Its quorum vote, metadata image and membership; None for a single broker.
        self.member: ClusterMember | None = None

    # ---- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_id = self._load_cluster_id()
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
        self.topics = TopicRegistry(self.data_dir / "kops-topics.json")
        self._load_producer_id_block()
        for record in self.topics:
            for index in range(record.partitions):
                self._open_partition(record, index)
        self._drop_orphan_logs()
        dispatcher = Dispatcher(self, self.metrics.requests)
        self._server = FrameServer(
            dispatcher.handle_frame,
            self._host,
            self._port,
            max_frame_bytes=self.config.int("socket.request.max.bytes"),
        )
        await self._server.start()
        if self._voters is not None:
            # Imported here: a single broker never loads the Raft stack.
            from kops.broker.cluster.member import ClusterMember

            self.member = ClusterMember(
                self.node_id,
                self._voters,
                self.data_dir / METADATA_LOG_DIR,
                self.cluster_id,
                self.config,
                self.advertised,
            )
            await self.member.start()
        self._tasks.append(asyncio.create_task(self._retention_loop()))
        self._tasks.append(asyncio.create_task(self._cleaner_loop()))
        self._tasks.append(asyncio.create_task(self._recovery_checkpoint_loop()))
        self.groups = GroupCoordinator(self)
        await self.groups.start()
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
        if self.member is not None:
            await self.member.stop()
        if self.groups is not None:
            await self.groups.stop()
        if self._server is not None:
            await self._server.stop()
        self.fetches.cancel_all()
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
        record = self.topics.get(topic)
        if record is None:
            return []
        return [self._partitions[(topic, i)] for i in range(record.partitions)]

    def effective_topic_config(self, record: TopicRecord) -> dict[str, str]:
        """The topic's settings over the broker's defaults."""
        return {**self.config.topic_defaults(), **record.configs}

    def _open_partition(self, record: TopicRecord, index: int) -> Partition:
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
            min_insync_replicas=int(settings["min.insync.replicas"]),
        )
        partition.mark_committed_to_end()
        self._partitions[(record.name, index)] = partition
        return partition

    def _drop_orphan_logs(self) -> None:
        for topic, index in self.logs.existing_partitions():
            if (topic, index) not in self._partitions:
                log.warning("removing log of unknown partition %s-%d", topic, index)
                self.logs.delete_partition(topic, index)

    # ---- topic administration -------------------------------------------
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
        try:
            validate_topic_config(configs)
        except ConfigError as exc:
            raise TopicError(ErrorCode.invalid_config, str(exc)) from None
        record = TopicRecord(
            name=name,
            topic_id=uuid.uuid4(),
            replicas=[[self.node_id] for _ in range(num_partitions)],
            configs=configs,
            internal=internal,
        )
        if validate_only:
            return record
        self.topics.add(record)
        for index in range(num_partitions):
            self._open_partition(record, index)
        log.info("created topic %s with %d partitions", name, num_partitions)
        return record

    def delete_topic(self, name: str) -> None:
        record = self.topics.get(name)
        if record is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        if record.internal:
            raise TopicError(
                ErrorCode.invalid_topic_exception, f"cannot delete internal topic {name!r}"
            )
        self.topics.remove(name)
        for index in range(record.partitions):
            partition = self._partitions.pop((name, index), None)
            if partition is not None:
                partition.wake()
            self.logs.delete_partition(name, index)
        if self.groups is not None:
            # Commits for a deleted topic must not leak into a re-created one.
            self.groups.on_topic_deleted(name)
        log.info("deleted topic %s", name)

    def create_partitions(self, name: str, count: int, *, validate_only: bool = False) -> None:
        record = self.topics.get(name)
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
        self.topics.save()
        for index in range(old, count):
            self._open_partition(record, index)

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
        record = self.topics.get(name)
        if record is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        updated = dict(record.configs)
        for key, value in changes:
            if value is None:
                updated.pop(key, None)
            else:
                updated[key] = value
        try:
            validate_topic_config(updated)
        except ConfigError as exc:
            raise TopicError(ErrorCode.invalid_config, str(exc)) from None
        if validate_only:
            return
        record.configs = updated
        self.topics.save()
        self._reconfigure(record)

    def _reconfigure(self, record: TopicRecord) -> None:
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
            self._reconfigure(record)

    def is_internal(self, name: str) -> bool:
        record = self.topics.get(name)
        return record is not None and record.internal

    def auto_create(self, name: str) -> TopicRecord | None:
        if not self.config.bool("auto.create.topics.enable") or topic_name_error(name):
            return None
        try:
            return self.create_topic(name)
        except TopicError:
            return self.topics.get(name)

    # ---- producers -------------------------------------------------------
    def allocate_producer_id(self) -> int:
        if self._next_producer_id >= self._producer_id_ceiling:
            self._reserve_producer_ids(self._next_producer_id)
        producer_id = self._next_producer_id
        self._next_producer_id += 1
        return producer_id

    def _load_producer_id_block(self) -> None:
        path = self.data_dir / "producer-id-block"
        start = int(path.read_text()) if path.exists() else 0
        self._reserve_producer_ids(start)

    def _reserve_producer_ids(self, start: int) -> None:
        # Reserving ids in blocks keeps allocation off the disk; a crash skips
        # the rest of a block, which only wastes ids, never reuses one.
        ceiling = start + 1000
        path = self.data_dir / "producer-id-block"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(ceiling))
        os.replace(tmp, path)
        self._next_producer_id = start
        self._producer_id_ceiling = ceiling

    def _load_cluster_id(self) -> str:
        path = self.data_dir / "meta.properties"
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1]
        if self._voters is not None:
            # Every member of a quorum must agree on the id without a format step
            # (Kafka's kafka-storage format): derive it from the voter set.
            members = ",".join(f"{n}@{h}:{p}" for n, (h, p) in sorted(self._voters.items()))
            seed = uuid.uuid5(uuid.NAMESPACE_URL, f"kops-quorum:{members}")
        else:
            seed = uuid.uuid4()
        cluster_id = base64.urlsafe_b64encode(seed.bytes).decode().rstrip("=")
        path.write_text(f"version=1\ncluster.id={cluster_id}\nnode.id={self.node_id}\n")
        return cluster_id

    # ---- background work ---------------------------------------------------
    async def _retention_loop(self) -> None:
        interval = self.config.int("log.retention.check.interval.ms") / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                # Rolling by segment.ms here too: an idle partition's active
                # segment must close before retention can delete it.
                self.logs.maybe_roll_all(now_ms())
                self.logs.apply_retention(now_ms())
            except Exception:
                log.exception("retention pass failed")

    async def _recovery_checkpoint_loop(self) -> None:
        # Kafka's log.flush.offset.checkpoint.interval.ms task: the further the recovery
        # point trails the log, the more an unclean restart must re-validate.
        interval = self.logs.checkpoint_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                self.logs.checkpoint_recovery_points(now_ms())
            except Exception:
                log.exception("recovery-point checkpoint failed")

    async def _cleaner_loop(self) -> None:
        interval = self.config.int("log.cleaner.backoff.ms") / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                # The heavy part runs in a worker thread; planning and the
                # segment swap stay on the loop, so appends never race it.
                await compact_all_async(self.logs, now_ms())
            except Exception:
                log.exception("log cleaner pass failed")
