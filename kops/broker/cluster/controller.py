"""The active controller's decisions: registrations, sessions, fencing, leaders, topics.

Sans-io, after Kafka's ClusterControlManager and ReplicationControlManager: the
caller passes the time, proposes the records a call returns as one Raft entry,
applies the committed entry to the ``MetadataImage`` and only then calls again.
Every decision is re-derived from the image, so a proposal that never commits
leaves nothing behind to undo: the next call simply decides again.

The one piece of state outside the image is each broker's session clock (the
time of its last heartbeat). It is the active controller's alone, and a newly
active controller restarts every clock (``activate``): it cannot know how long
a broker was silent before it took over, and must not fence it for that.

Leader election is always clean: a new leader comes from the ISR, and the last
ISR member of a partition is never removed, so when it returns the partition
has a leader with every committed record again.

ISR changes come from the partition's leader (AlterPartition), checked against
its leader epoch and the partition epoch its proposal was based on, so a
leader that has been replaced, or that has not seen the latest change, cannot
overwrite the image with an ISR decided on stale knowledge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from kops.broker.cluster.metadata import (
    NO_LEADER,
    ChangePartition,
    ChangeTopicConfigs,
    CreatePartition,
    CreateTopic,
    FenceBroker,
    MetadataImage,
    MetadataRecord,
    PartitionInfo,
    RegisterBroker,
    RemoveTopic,
    TopicInfo,
    UnfenceBroker,
)
from kops.broker.cluster.topics import topic_name_error
from kops.errors import ApiError

__all__ = ["Controller", "ControllerConfig", "ControllerError", "HeartbeatOutcome", "Registration"]


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """``session_timeout_ms`` is broker.session.timeout.ms (Kafka's default is 9000).

    ``connection_grace_ms``: how long a broker whose heartbeat connection closed
    has to heartbeat again before it is fenced (see Controller.connection_lost).

    ``unclean_leader_election`` is here for Kafka's name only: electing a replica
    outside the ISR can lose committed records, and only False is implemented.
    """

    session_timeout_ms: int = 3000
    unclean_leader_election: bool = False
    connection_grace_ms: int = 1000

    def __post_init__(self) -> None:
        if self.session_timeout_ms <= 0:
            raise ValueError("session_timeout_ms must be positive")
        if self.unclean_leader_election:
            raise ValueError("unclean leader election is not implemented")


class ControllerError(ApiError):
    """A request the controller refuses, with the Kafka error code to answer with."""


@dataclass(frozen=True, slots=True)
class Registration:
    broker_epoch: int
    records: tuple[MetadataRecord, ...]


@dataclass(frozen=True, slots=True)
class HeartbeatOutcome:
    """The answer to one BrokerHeartbeat, true once ``records`` have committed.

    ``is_fenced`` is the broker's state after the records; ``should_shut_down``
    holds only once the image shows the broker leading nothing, as in Kafka, so
    a shutting-down leader hears it on the heartbeat after its leaderships moved.
    """

    error: ErrorCode
    is_caught_up: bool
    is_fenced: bool
    should_shut_down: bool
    records: tuple[MetadataRecord, ...]


_STALE = HeartbeatOutcome(ErrorCode.stale_broker_epoch, False, True, False, ())


def _change(p: PartitionInfo, isr: tuple[int, ...], leader: int) -> ChangePartition:
    """The next state of a partition; a leader change (to -1 too) starts a leader epoch."""
    epoch = p.leader_epoch + (leader != p.leader)
    return ChangePartition(p.topic, p.partition, isr, leader, epoch, p.partition_epoch + 1)


def _assign(
    topic: str, indexes: range, live: list[int], replication_factor: int, start: int
) -> list[CreatePartition]:
    """Replicas round the unfenced brokers, partition k of the cluster one broker further on."""
    n = len(live)
    records = []
    for p in indexes:
        replicas = tuple(live[(start + p + k) % n] for k in range(replication_factor))
        records.append(CreatePartition(topic, p, replicas, replicas, replicas[0]))
    return records


def _refuse(code: ErrorCode, message: str) -> ControllerError:
    return ControllerError(message, error_code=code)


def _sorted_partitions(image: MetadataImage) -> list[PartitionInfo]:
    return [image.partitions[key] for key in sorted(image.partitions)]


def _leave_changes(image: MetadataImage, broker_id: int) -> list[ChangePartition]:
    """Take a broker that is being fenced out of every ISR and leadership.

    Its last ISR membership stays (the partition goes leaderless, leader -1,
    rather than ever electing a replica that may lack committed records); a
    leadership passes to the first replica in assignment order that is in the
    new ISR and unfenced. Nothing is returned for what is already that way, so
    the same call on the resulting image returns nothing.
    """
    fenced = {b.broker_id for b in image.brokers.values() if b.fenced} | {broker_id}
    changes = []
    for p in _sorted_partitions(image):
        if broker_id not in p.isr:
            continue
        isr = tuple(r for r in p.isr if r != broker_id) or p.isr
        leader = p.leader
        if leader == broker_id:
            leader = next((r for r in p.replicas if r in isr and r not in fenced), NO_LEADER)
        if isr != p.isr or leader != p.leader:
            changes.append(_change(p, isr, leader))
    return changes


def _return_changes(image: MetadataImage, broker_id: int) -> list[ChangePartition]:
    """An unfenced broker leads every leaderless partition whose ISR it is in."""
    return [
        _change(p, p.isr, broker_id)
        for p in _sorted_partitions(image)
        if p.leader == NO_LEADER and broker_id in p.isr
    ]


class Controller:
    """Decides; never writes the image it holds (the caller applies what commits)."""

    def __init__(self, image: MetadataImage, config: ControllerConfig = ControllerConfig()) -> None:
        self._image = image
        self._config = config
        self._last_heartbeat: dict[int, int] = {}

    @property
    def image(self) -> MetadataImage:
        return self._image

    @property
    def config(self) -> ControllerConfig:
        return self._config

    def activate(self, now_ms: int, last_heard: Mapping[int, int] | None = None) -> None:
        """This controller has just become active: every broker's session starts now, or
        earlier for a broker `last_heard` says went silent before (the former controller,
        whose silence is why this one was elected), so its partitions move a session
        timeout after it died rather than after the election."""
        heard = last_heard or {}
        self._last_heartbeat = {b: min(now_ms, heard.get(b, now_ms)) for b in self._image.brokers}

    def register(
        self, broker_id: int, incarnation_id: str, host: str, port: int, now_ms: int
    ) -> Registration:
        """A broker's BrokerRegistration; a retry of the current incarnation changes nothing.

        A new incarnation (the broker restarted) gets a new epoch and starts
        fenced, so in the same entry it gives up what its old incarnation led:
        the restarted process may not have everything the old one had.
        """
        if broker_id < 0 or not incarnation_id or not 0 <= port <= 65535:
            raise ControllerError(
                f"invalid registration: broker {broker_id}, incarnation {incarnation_id!r}, "
                f"port {port}",
                error_code=ErrorCode.invalid_request,
            )
        self._last_heartbeat[broker_id] = now_ms
        current = self._image.brokers.get(broker_id)
        if current is not None and current.incarnation_id == incarnation_id:
            return Registration(current.broker_epoch, ())
        epoch = self._image.next_broker_epoch
        records: list[MetadataRecord] = [
            RegisterBroker(broker_id, incarnation_id, epoch, host, port)
        ]
        if current is not None:
            records += _leave_changes(self._image, broker_id)
        return Registration(epoch, tuple(records))

    def heartbeat(
        self,
        broker_id: int,
        broker_epoch: int,
        metadata_offset: int,
        now_ms: int,
        want_shut_down: bool = False,
    ) -> HeartbeatOutcome:
        """A broker's BrokerHeartbeat: keeps its session, unfences it once it has caught up.

        ``want_shut_down`` (controlled shutdown) fences it and moves its
        leaderships in one entry, as a session expiry would, but before the
        broker stops rather than a session timeout after: clients see no
        partition led by a broker that is gone.
        """
        b = self._image.brokers.get(broker_id)
        if b is None or b.broker_epoch != broker_epoch:
            return _STALE
        self._last_heartbeat[broker_id] = now_ms
        caught_up = metadata_offset >= b.registered_offset
        if want_shut_down:
            leads = any(p.leader == broker_id for p in self._image.partitions.values())
            records: tuple[MetadataRecord, ...] = ()
            if not b.fenced:
                fence = FenceBroker(broker_id, broker_epoch)
                records = (fence, *_leave_changes(self._image, broker_id))
            return HeartbeatOutcome(ErrorCode.none, caught_up, True, not leads, records)
        if b.fenced and caught_up:
            unfence = UnfenceBroker(broker_id, broker_epoch)
            records = (unfence, *_return_changes(self._image, broker_id))
            return HeartbeatOutcome(ErrorCode.none, True, False, False, records)
        return HeartbeatOutcome(ErrorCode.none, caught_up, b.fenced, False, ())

    def connection_lost(self, broker_id: int, now_ms: int) -> None:
        """The connection a broker heartbeats on has closed. A live broker reconnects and
        heartbeats again within ``connection_grace_ms``; a dead one's kernel closed it
        (SIGKILL, a crash), so its session ends then rather than a whole session
        timeout after its last heartbeat. Never lengthens a session."""
        last = self._last_heartbeat.get(broker_id)
        if last is None:
            return
        cut = now_ms - self._config.session_timeout_ms + self._config.connection_grace_ms
        self._last_heartbeat[broker_id] = min(last, cut)

    def _sync_sessions(self, now_ms: int) -> None:
        """Start a clock for each registration this controller never heard from.

        Drops the clocks of registrations that never committed.
        """
        for broker_id in self._image.brokers:
            self._last_heartbeat.setdefault(broker_id, now_ms)
        for broker_id in self._last_heartbeat.keys() - self._image.brokers.keys():
            del self._last_heartbeat[broker_id]

    def expire(self, now_ms: int) -> list[tuple[MetadataRecord, ...]]:
        """One entry per unfenced broker whose last heartbeat is older than the session timeout.

        Entry k is decided as if entries before it had committed, so the caller
        proposes them in order and stops at the first that fails (Raft commits a
        prefix of what one leader proposes, so a later entry cannot commit alone).
        """
        self._sync_sessions(now_ms)
        timeout = self._config.session_timeout_ms
        due = [
            b.broker_id
            for b in sorted(self._image.brokers.values(), key=lambda b: b.broker_id)
            if not b.fenced and now_ms - self._last_heartbeat[b.broker_id] > timeout
        ]
        entries: list[tuple[MetadataRecord, ...]] = []
        scratch = self._image.copy() if len(due) > 1 else self._image
        for broker_id in due:
            fence = FenceBroker(broker_id, scratch.brokers[broker_id].broker_epoch)
            entry: tuple[MetadataRecord, ...] = (fence, *_leave_changes(scratch, broker_id))
            entries.append(entry)
            if scratch is not self._image:
                scratch.apply(entry, scratch.offset + 1)
        return entries

    def next_deadline_ms(self) -> int | None:
        """The first time at which ``expire`` would fence a broker; None if no broker can expire.

        An unfenced broker without a session clock yet (the controller was not
        activated) makes it 0: ``expire`` is due at once, and starts that clock.
        """
        deadlines = []
        for b in self._image.brokers.values():
            if not b.fenced:
                last = self._last_heartbeat.get(b.broker_id)
                deadlines.append(0 if last is None else last + self._config.session_timeout_ms + 1)
        return min(deadlines, default=None)

    def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Mapping[str, str],
        topic_id: str,
    ) -> tuple[MetadataRecord, ...]:
        """CreateTopics for one topic: its records, or ControllerError with Kafka's code.

        Replicas go round the unfenced brokers, each topic starting one broker
        further on, so that the first replicas (the preferred leaders) of many
        topics do not all land on the lowest broker id.
        """
        if (problem := topic_name_error(name)) is not None:
            raise ControllerError(problem, error_code=ErrorCode.invalid_topic_exception)
        if name in self._image.topics:
            raise ControllerError(
                f"topic {name!r} already exists", error_code=ErrorCode.topic_already_exists
            )
        if partitions < 1:
            raise ControllerError(
                f"number of partitions must be at least 1, got {partitions}",
                error_code=ErrorCode.invalid_partitions,
            )
        live = self._image.live_brokers()
        if not 1 <= replication_factor <= len(live):
            raise ControllerError(
                f"replication factor {replication_factor} with {len(live)} unfenced brokers",
                error_code=ErrorCode.invalid_replication_factor,
            )
        if not topic_id or any(t.topic_id == topic_id for t in self._image.topics.values()):
            raise ControllerError(
                f"topic id {topic_id!r} is empty or in use", error_code=ErrorCode.invalid_request
            )
        records: list[MetadataRecord] = [
            CreateTopic(name, topic_id, tuple(sorted(configs.items())))
        ]
        start = self._image.topic_count
        records += _assign(name, range(partitions), live, replication_factor, start)
        return tuple(records)

    def _existing_topic(self, name: str) -> TopicInfo:
        topic = self._image.topics.get(name)
        if topic is None:
            raise ControllerError(
                f"unknown topic {name!r}", error_code=ErrorCode.unknown_topic_or_partition
            )
        return topic

    def delete_topic(self, name: str) -> tuple[MetadataRecord, ...]:
        self._existing_topic(name)
        return (RemoveTopic(name),)

    def create_partitions(self, name: str, count: int) -> tuple[MetadataRecord, ...]:
        """CreatePartitions: the new partitions with the replication factor of partition 0."""
        topic = self._existing_topic(name)
        if count <= topic.partition_count:
            raise ControllerError(
                f"topic {name!r} has {topic.partition_count} partitions; "
                "the new count must be larger",
                error_code=ErrorCode.invalid_partitions,
            )
        replication_factor = len(self._image.partitions[(name, 0)].replicas)
        live = self._image.live_brokers()
        if replication_factor > len(live):
            raise ControllerError(
                f"replication factor {replication_factor} with {len(live)} unfenced brokers",
                error_code=ErrorCode.invalid_replication_factor,
            )
        start = sum(t.partition_count for t in self._image.topics.values())
        new = range(topic.partition_count, count)
        return tuple(_assign(name, new, live, replication_factor, start))

    def alter_topic_configs(
        self, name: str, configs: Mapping[str, str]
    ) -> tuple[MetadataRecord, ...]:
        """The topic's overrides in full; nothing when they are unchanged."""
        topic = self._existing_topic(name)
        wanted = tuple(sorted(configs.items()))
        return () if wanted == topic.configs else (ChangeTopicConfigs(name, wanted),)

    def elect_preferred_leaders(self) -> tuple[MetadataRecord, ...]:
        """auto.leader.rebalance: each partition back to its first replica where that is clean."""
        image = self._image
        records: list[MetadataRecord] = []
        for p in _sorted_partitions(image):
            first = p.replicas[0]
            if first != p.leader and first in p.isr and not image.brokers[first].fenced:
                records.append(_change(p, p.isr, first))
        return tuple(records)

    def alter_partition(
        self,
        broker_id: int,
        broker_epoch: int,
        topic: str,
        partition: int,
        leader_epoch: int,
        new_isr: Sequence[int],
        partition_epoch: int,
        *,
        member_epochs: Mapping[int, int] | None = None,
    ) -> tuple[MetadataRecord, ...]:
        """A leader's AlterPartition: the new ISR as one record, () if it is the ISR already.

        Refusals are checked in the order of Kafka's validateAlterPartitionData,
        so a request that is wrong in several ways gets Kafka's answer. Two codes
        differ from Kafka's: a broker that is not the leader, and a leader epoch
        ahead of this image, get NOT_LEADER_OR_FOLLOWER (Kafka: INVALID_REQUEST
        and NOT_CONTROLLER); any partition epoch but the current one gets
        INVALID_UPDATE_VERSION (Kafka: NOT_CONTROLLER when ahead). A replica may
        join only while registered and unfenced, with the epoch the leader saw
        (``member_epochs``, AlterPartition v3; -1 or absent skips the check), so
        a follower that restarted is not let back in on its old incarnation's
        fetches. Members that stay need no check: fencing a broker already took
        it out of every ISR it was not the last member of, and such a partition
        has no leader to ask.
        """
        what = f"partition {topic}-{partition}"
        b = self._image.brokers.get(broker_id)
        if b is None or b.broker_epoch != broker_epoch:
            raise _refuse(
                ErrorCode.stale_broker_epoch,
                f"broker {broker_id} epoch {broker_epoch} is not a current registration",
            )
        p = self._image.partitions.get((topic, partition))
        if p is None:
            raise _refuse(ErrorCode.unknown_topic_or_partition, f"unknown {what}")
        if leader_epoch > p.leader_epoch:
            raise _refuse(
                ErrorCode.not_leader_or_follower,
                f"{what}: leader epoch {leader_epoch} is ahead of {p.leader_epoch}",
            )
        if partition_epoch > p.partition_epoch:
            raise _refuse(
                ErrorCode.invalid_update_version,
                f"{what}: partition epoch {partition_epoch} is ahead of {p.partition_epoch}",
            )
        if leader_epoch < p.leader_epoch:
            raise _refuse(
                ErrorCode.fenced_leader_epoch,
                f"{what}: leader epoch {leader_epoch} is older than {p.leader_epoch}",
            )
        if broker_id != p.leader:
            raise _refuse(
                ErrorCode.not_leader_or_follower, f"{what}: led by {p.leader}, not {broker_id}"
            )
        if partition_epoch < p.partition_epoch:
            raise _refuse(
                ErrorCode.invalid_update_version,
                f"{what}: partition epoch {partition_epoch} is older than {p.partition_epoch}",
            )
        isr = tuple(new_isr)
        if p.leader not in isr or len(set(isr)) != len(isr) or not set(isr) <= set(p.replicas):
            raise _refuse(
                ErrorCode.invalid_request,
                f"{what}: ISR {list(isr)} is not distinct replicas of {list(p.replicas)} "
                f"including the leader {p.leader}",
            )
        epochs = member_epochs or {}
        for r in isr:
            if r in p.isr:
                continue
            joiner = self._image.brokers.get(r)
            seen = epochs.get(r, -1)
            if joiner is None or joiner.fenced or seen not in (-1, joiner.broker_epoch):
                raise _refuse(
                    ErrorCode.ineligible_replica,
                    f"{what}: replica {r} is unregistered, fenced or of another incarnation",
                )
        if set(isr) == set(p.isr):
            return ()
        return (
            ChangePartition(topic, partition, isr, p.leader, p.leader_epoch, p.partition_epoch + 1),
        )
