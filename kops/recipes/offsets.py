"""Group offsets through the Kafka admin API, shared by the rewind and lag recipes (log
start/end offsets and offsets for a time: :func:`kops.admin.list_offsets`, ``watermarks``).

Everything goes through :class:`kops.client.AdminSession`, so an unreachable cluster fails
fast with one clear line, and every call works against any Kafka-protocol cluster.

Partitions are keyed by ``(topic, partition)`` tuples throughout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from kops.admin import TopicPartitionKey
from kops.client import AdminSession, KopsClientError, translate_error

__all__ = [
    "GroupInfo",
    "MemberInfo",
    "TopicPartitionKey",
    "alter_group_offsets",
    "committed_offsets",
    "describe_group",
    "list_group_ids",
    "topic_partitions",
]


@dataclass(frozen=True)
class MemberInfo:
    member_id: str
    client_id: str
    host: str
    assignment: tuple[TopicPartitionKey, ...] = ()


@dataclass(frozen=True)
class GroupInfo:
    group: str
    #: Upper-case Kafka state name: STABLE, EMPTY, DEAD, PREPARING_REBALANCE, ...
    state: str
    members: tuple[MemberInfo, ...] = field(default_factory=tuple)

    @property
    def active(self) -> bool:
        """True while any consumer is a member (the group cannot have its offsets reset)."""
        return bool(self.members) or self.state not in ("EMPTY", "DEAD", "UNKNOWN")

    def owner(self, key: TopicPartitionKey) -> MemberInfo | None:
        for member in self.members:
            if key in member.assignment:
                return member
        return None


def describe_group(admin: AdminSession, group: str) -> GroupInfo:
    """State and members of ``group``; a group that does not exist is reported as DEAD."""
    futures = admin.client.describe_consumer_groups([group], request_timeout=admin.request_timeout)
    try:
        desc = admin.wait(futures[group], "describe group", group)
    except KopsClientError as exc:
        if exc.code == "GROUP_ID_NOT_FOUND":
            return GroupInfo(group, "DEAD")
        raise
    members = []
    for m in desc.members or ():
        assigned = m.assignment.topic_partitions if m.assignment is not None else []
        members.append(
            MemberInfo(
                member_id=m.member_id,
                client_id=m.client_id or "",
                host=m.host or "",
                assignment=tuple((tp.topic, tp.partition) for tp in assigned),
            )
        )
    state = getattr(desc.state, "name", str(desc.state)).upper()
    return GroupInfo(group, state, tuple(members))


def list_group_ids(admin: AdminSession) -> list[str]:
    """Every consumer group the cluster knows, sorted."""
    future = admin.client.list_consumer_groups(request_timeout=admin.request_timeout)
    result = admin.wait(future, "list groups")
    return sorted(g.group_id for g in result.valid)


def committed_offsets(
    admin: AdminSession, group: str, keys: Iterable[TopicPartitionKey] | None = None
) -> dict[TopicPartitionKey, int | None]:
    """The group's committed offsets: for ``keys`` (None where nothing is committed), or for
    every partition it has committed when ``keys`` is None."""
    wanted = None if keys is None else [TopicPartition(t, p) for t, p in keys]
    request = ConsumerGroupTopicPartitions(group, wanted)
    futures = admin.client.list_consumer_group_offsets(
        [request], request_timeout=admin.request_timeout
    )
    result = admin.wait(futures[group], "fetch committed offsets", group)
    out: dict[TopicPartitionKey, int | None] = {}
    for tp in result.topic_partitions or ():
        if tp.error is not None:
            raise translate_error(KafkaException(tp.error), "fetch committed offsets", tp.topic)
        offset = tp.offset if tp.offset >= 0 else None
        if keys is None and offset is None:
            continue
        out[(tp.topic, tp.partition)] = offset
    return out


def alter_group_offsets(
    admin: AdminSession, group: str, offsets: dict[TopicPartitionKey, int]
) -> None:
    """Commit ``offsets`` for ``group`` (the broker refuses while the group has members)."""
    if not offsets:
        return
    tps = [TopicPartition(t, p, off) for (t, p), off in sorted(offsets.items())]
    futures = admin.client.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], request_timeout=admin.request_timeout
    )
    result = admin.wait(futures[group], "commit offsets", group)
    for tp in result.topic_partitions or ():
        if tp.error is not None:
            raise translate_error(KafkaException(tp.error), "commit offsets", tp.topic)


def topic_partitions(admin: AdminSession, topic: str) -> list[int]:
    """Partition ids of ``topic``, sorted; raises :class:`kops.client.UnknownTopic`."""
    md = admin.metadata(topic)
    return sorted(md.topics[topic].partitions)
