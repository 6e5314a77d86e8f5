"""What a cluster member does with each metadata image: open, lead, follow, remove.

Every applied image goes through ``apply``: the partitions assigned to this
broker are opened, each takes the leader, leader epoch and ISR the image gives
it, the ones this broker follows fetch from their leader (ReplicaFetchers), the
ones it leads send their ISR changes to the controller (AlterPartitionSender),
and the replicas of deleted topics go. The group coordinator follows the
leadership of the `__consumer_offsets` partitions, the transaction coordinator
that of the `__transaction_state` partitions. A timer re-checks every led
partition's ISR, so a follower that stopped fetching leaves it after
replica.lag.time.max.ms even when nothing else happens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from kio.schema.errors import ErrorCode

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.hosting import ImageTopics, plan_hosting
from kops.broker.cluster.isr_changes import AlterPartitionSender
from kops.broker.cluster.metadata import MetadataImage, PartitionInfo
from kops.broker.cluster.partition import Partition, TopicPartition
from kops.broker.cluster.replica_fetcher import ReplicaFetchers
from kops.broker.cluster.replication import IsrProposal
from kops.broker.cluster.topics import TopicRecord
from kops.broker.config import BrokerConfig
from kops.broker.groups.storage import OFFSETS_TOPIC
from kops.broker.txn.log import TRANSACTION_STATE_TOPIC

if TYPE_CHECKING:
    from kops.broker.cluster.member import ClusterMember
    from kops.broker.groups.coordinator import GroupCoordinator
    from kops.broker.txn.coordinator import TransactionCoordinator

__all__ = ["MemberPartitions"]

# Answers to an ISR proposal whose basis is gone: a newer partition or leader epoch
# (or registration) exists, and the image that brings it replaces the proposal.
_SUPERSEDED = frozenset(
    {
        ErrorCode.invalid_update_version,
        ErrorCode.fenced_leader_epoch,
        ErrorCode.not_leader_or_follower,
        ErrorCode.stale_broker_epoch,
    }
)

log = logging.getLogger("kops.broker.replication")


class _PartitionOwner(Protocol):
    """A coordinator serving the keys of the internal topic's partitions it leads."""

    def set_partition_count(self, n: int) -> None: ...

    def elect(self, index: int) -> int: ...

    def resign(self, index: int) -> int: ...


class HostBroker(Protocol):
    """The broker's part: its partitions and logs (kops.broker.broker.Broker)."""

    @property
    def groups(self) -> GroupCoordinator | None: ...

    @property
    def transactions(self) -> TransactionCoordinator | None: ...

    def partition(self, topic: str, index: int) -> Partition | None: ...

    def open_partition(self, record: TopicRecord, index: int) -> Partition: ...

    def remove_partition(self, topic: str, index: int) -> None: ...

    def reconfigure(self, record: TopicRecord) -> None: ...

    def drop_orphan_logs(self) -> None: ...


class MemberPartitions:
    def __init__(
        self, node_id: int, broker: HostBroker, member: ClusterMember, config: BrokerConfig
    ) -> None:
        self.node_id = node_id
        self.topics = ImageTopics()
        self._broker = broker
        self._member = member
        self._hosted_ids: dict[TopicPartition, str] = {}
        self._configs_seen: dict[str, tuple[tuple[str, str], ...]] = {}
        self._orphans_checked = False
        self.fetchers = ReplicaFetchers(
            node_id,
            self.endpoint,
            backoff_ms=config.int("replica.fetch.backoff.ms"),
            max_wait_ms=config.int("replica.fetch.wait.max.ms"),
            max_bytes=config.int("replica.fetch.max.bytes"),
        )
        self._isr = AlterPartitionSender(
            node_id, member.voters, member.control, lambda: member.lifecycle.broker_epoch
        )
        self._isr_check_s = max(0.05, min(1.0, config.int("replica.lag.time.max.ms") / 4000))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._check_isrs(), name="kops-isr-checks")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        await self.fetchers.close()
        await self._isr.close()

    @property
    def image(self) -> MetadataImage:
        return self._member.control.image

    def endpoint(self, broker_id: int) -> tuple[str, int] | None:
        """Where to fetch from another broker: its controller.quorum.voters address, the
        inter-broker address book (as Kafka's inter-broker listener); else what it advertised."""
        if broker_id in self._member.voters:
            return self._member.voters[broker_id]
        info = self.image.brokers.get(broker_id)
        return None if info is None else (info.host, info.port)

    # ---- every image --------------------------------------------------------------------

    def apply(self, image: MetadataImage) -> None:
        self.topics.update(image)
        plan = plan_hosting(image, self.node_id, self._hosted_ids, self._configs_seen)
        gone = set()
        for key in plan.remove:
            self.fetchers.unfollow(key)
            topic_id = self._hosted_ids.pop(key)
            self._broker.remove_partition(*key)
            current = image.topics.get(key[0])
            if current is None or current.topic_id != topic_id:
                gone.add(key[0])
        groups = self._broker.groups
        for name in sorted(gone):
            log.info("deleted the local replicas of topic %s", name)
            if groups is not None:
                groups.on_topic_deleted(name)
        for info in plan.open:
            record = self.topics.get(info.topic)
            assert record is not None
            partition = self._broker.open_partition(record, info.partition)
            partition.on_isr_change = self._propose_isr
            self._hosted_ids[(info.topic, info.partition)] = image.topics[info.topic].topic_id
        for info in (*plan.open, *plan.update):
            self._take_state(info)
        for name in plan.reconfigure:
            record = self.topics.get(name)
            if record is not None:
                self._broker.reconfigure(record)
        self._configs_seen = {name: image.topics[name].configs for name, _ in self._hosted_ids}
        self._move_coordinators(image)
        me = image.brokers.get(self.node_id)
        if not self._orphans_checked and me is not None and not me.fenced:
            # Caught up with the metadata: a log it does not assign was deleted meanwhile.
            self._orphans_checked = True
            self._broker.drop_orphan_logs()

    def _take_state(self, info: PartitionInfo) -> None:
        partition = self._broker.partition(info.topic, info.partition)
        assert partition is not None
        partition.set_replica_state(
            info.leader,
            info.leader_epoch,
            info.replicas,
            info.isr,
            local_id=self.node_id,
            partition_epoch=info.partition_epoch,
        )
        key = (info.topic, info.partition)
        if info.leader == self.node_id or len(info.replicas) <= 1:
            self.fetchers.unfollow(key)
        else:
            self.fetchers.follow(
                partition, info.leader if info.leader >= 0 else None, info.leader_epoch
            )

    def _move_coordinators(self, image: MetadataImage) -> None:
        """Each coordinator follows the leadership of its internal topic's partitions."""
        owners: tuple[tuple[str, _PartitionOwner | None], ...] = (
            (OFFSETS_TOPIC, self._broker.groups),
            (TRANSACTION_STATE_TOPIC, self._broker.transactions),
        )
        for name, owner in owners:
            topic = image.topics.get(name)
            if owner is None or topic is None:
                continue
            owner.set_partition_count(topic.partition_count)
            for info in image.partitions_of(name):
                hosted = self._broker.partition(name, info.partition) is not None
                if info.leader == self.node_id and hosted:
                    owner.elect(info.partition)
                else:
                    owner.resign(info.partition)

    # ---- the leader's ISR changes -------------------------------------------------------

    def _propose_isr(self, partition: Partition, proposal: IsrProposal) -> None:
        topic = self.image.topics.get(partition.topic)
        if topic is None:
            return

        def done(code: ErrorCode, _state: PartitionInfo | None) -> None:
            # Success shows in the next image (the same leader epoch, a new partition epoch).
            if code == ErrorCode.none:
                return
            if code == ErrorCode.request_timed_out:
                # It may have committed unanswered: only the same proposal is safe to send.
                replication = partition.replication
                if replication is not None and replication.pending == proposal:
                    self._propose_isr(partition, proposal)
            elif code in _SUPERSEDED:
                # The partition moved on at the controller; the image will say how.
                log.info("%s: ISR change %s superseded: %s", partition, proposal.isr, code.name)
            else:
                log.info("%s: ISR change %s refused: %s", partition, proposal.isr, code.name)
                partition.isr_change_failed(proposal)

        log.info("%s: proposing ISR %s", partition, list(proposal.isr))
        self._isr.submit(
            partition.topic,
            partition.index,
            topic.topic_id,
            partition.leader_epoch,
            proposal,
            done,
        )

    async def _check_isrs(self) -> None:
        while True:
            await asyncio.sleep(self._isr_check_s)
            for key in list(self._hosted_ids):
                partition = self._broker.partition(*key)
                if partition is not None and partition.replication is not None:
                    partition.check_isr()
