"""The group coordinator serves only the `__consumer_offsets` partitions it owns.

A broker coordinates the groups whose offsets partition it leads: `elect`
loads a partition's groups, `resign` unloads them (answering parked JoinGroup
and SyncGroup requests with NOT_COORDINATOR), and every request for a group
of a partition not owned gets NOT_COORDINATOR, so that the client looks the
coordinator up again. A coordinator that lost a partition's leadership before
resigning it must not append to it either.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from kio.schema.errors import ErrorCode
from kio.schema.heartbeat.v3.request import HeartbeatRequest
from kio.schema.join_group.v5.request import JoinGroupRequest, JoinGroupRequestProtocol
from kio.schema.offset_commit.v7.request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from kio.schema.offset_fetch.v5.request import OffsetFetchRequest
from kio.schema.sync_group.v3.request import SyncGroupRequest, SyncGroupRequestAssignment

from kops.broker.config import BrokerConfig
from kops.broker.groups.coordinator import GroupCoordinator
from kops.broker.groups.group import GroupState, now_ms
from kops.broker.groups.storage import OFFSETS_TOPIC, partition_for
from kops.broker.runner import BrokerThread
from kops.testing import TEST_CONFIG
from tests.broker.clients import create_topic
from tests.broker.groups.group_helpers import RawClient, new_group, wait_until

# Long enough that a parked request only ends early because something answered it.
MINUTE = datetime.timedelta(seconds=60)
SESSION = datetime.timedelta(seconds=10)


class Broker:
    """An in-process broker, its coordinator, and calls onto its event loop."""

    def __init__(self, runner: BrokerThread, bootstrap: str) -> None:
        self.runner = runner
        self.bootstrap = bootstrap
        coordinator = runner.broker.groups
        assert coordinator is not None
        self.coordinator = coordinator

    def call(self, fn: Any) -> Any:
        return self.runner.call(fn)

    def partition_of(self, group: str) -> int:
        return self.call(lambda: self.coordinator.store.partition_for(group))

    def resign(self, index: int) -> int:
        return self.call(lambda: self.coordinator.resign(index))

    def elect(self, index: int) -> int:
        return self.call(lambda: self.coordinator.elect(index))

    def group(self, group_id: str) -> Any:
        return self.call(lambda: self.coordinator.groups.get(group_id))

    def offsets_end(self) -> int:
        """The sum of the offsets partitions' log end offsets: grows with every write."""
        return self.call(
            lambda: sum(p.log_end_offset for p in self.runner.broker.partitions_of(OFFSETS_TOPIC))
        )


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    runner = BrokerThread(tmp_path, config=TEST_CONFIG)
    bootstrap = runner.start()
    try:
        yield Broker(runner, bootstrap)
    finally:
        runner.stop()


@pytest.fixture
def client(broker: Broker) -> Iterator[RawClient]:
    raw = RawClient(broker.bootstrap)
    try:
        yield raw
    finally:
        raw.close()


def subscription(topic: str) -> bytes:
    """ConsumerProtocolSubscription v0: version, [topics], null user data."""
    return struct.pack(">hih", 0, 1, len(topic)) + topic.encode() + struct.pack(">i", -1)


def join(client: RawClient, group: str, member_id: str = "", *, instance: str | None = None) -> Any:
    return client.send(
        JoinGroupRequest(
            group_id=group,
            session_timeout=SESSION,
            rebalance_timeout=MINUTE,
            member_id=member_id,
            group_instance_id=instance,
            protocol_type="consumer",
            protocols=(JoinGroupRequestProtocol(name="range", metadata=subscription("t")),),
        )
    )


def join_fully(client: RawClient, group: str) -> Any:
    """A new dynamic member's two JoinGroups (KIP-394); the second one's response."""
    first = join(client, group)
    assert first.error_code == ErrorCode.member_id_required
    return join(client, group, first.member_id)


def sync(
    client: RawClient,
    group: str,
    generation: int,
    member_id: str,
    assignments: dict[str, bytes] | None = None,
    *,
    instance: str | None = None,
) -> Any:
    return client.send(
        SyncGroupRequest(
            group_id=group,
            generation_id=generation,
            member_id=member_id,
            group_instance_id=instance,
            assignments=tuple(
                SyncGroupRequestAssignment(member_id=m, assignment=a)
                for m, a in (assignments or {}).items()
            ),
        )
    )


def commit(
    client: RawClient,
    group: str,
    topic: str,
    offset: int,
    generation: int = -1,
    member_id: str = "",
) -> ErrorCode:
    response = client.send(
        OffsetCommitRequest(
            group_id=group,
            generation_id_or_member_epoch=generation,
            member_id=member_id,
            topics=(
                OffsetCommitRequestTopic(
                    name=topic,
                    partitions=(
                        OffsetCommitRequestPartition(
                            partition_index=0,
                            committed_offset=offset,
                            committed_leader_epoch=-1,
                            committed_metadata="",
                        ),
                    ),
                ),
            ),
        )
    )
    code: ErrorCode = response.topics[0].partitions[0].error_code
    return code


def fetch(client: RawClient, group: str) -> tuple[ErrorCode, dict[tuple[str, int], int]]:
    response = client.send(OffsetFetchRequest(group_id=group, topics=None))
    offsets = {
        (t.name, p.partition_index): p.committed_offset
        for t in response.topics
        for p in t.partitions
    }
    return response.error_code, offsets


def heartbeat(client: RawClient, group: str, generation: int, member_id: str) -> ErrorCode:
    code: ErrorCode = client.send(
        HeartbeatRequest(group_id=group, generation_id=generation, member_id=member_id)
    ).error_code
    return code


def in_background(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Run a blocking request in a thread; its response lands in the list."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def other_group(partition: int, partitions: int) -> str:
    """A new group id placed in another partition than `partition`."""
    while partition_for(group := new_group(), partitions) == partition:
        pass
    return group


def test_resign_answers_not_coordinator_and_elect_brings_the_group_back(
    broker: Broker, client: RawClient, topic_name: str
) -> None:
    create_topic(broker.bootstrap, topic_name, 1)
    group = new_group()
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic_name, 0, 42)], asynchronous=False)
        joined = join_fully(client, group)
        assert joined.error_code == ErrorCode.none and joined.generation_id == 1
        member = joined.member_id
        assert sync(client, group, 1, member, {member: b"A"}).assignment == b"A"
        assert commit(client, group, topic_name, 43, 1, member) == ErrorCode.none

        index = broker.partition_of(group)
        assert broker.resign(index) == 1
        assert broker.group(group) is None
        assert index not in broker.call(lambda: set(broker.coordinator.owned))
        assert fetch(client, group) == (ErrorCode.not_coordinator, {})
        assert commit(client, group, topic_name, 44, 1, member) == ErrorCode.not_coordinator
        assert heartbeat(client, group, 1, member) == ErrorCode.not_coordinator
        assert join(client, group, member).error_code == ErrorCode.not_coordinator

        assert broker.elect(index) == 1
        # The refused commit of 44 reached neither memory nor the topic.
        assert fetch(client, group) == (ErrorCode.none, {(topic_name, 0): 43})
        restored = broker.group(group)
        assert restored.generation == 1 and restored.is_(GroupState.STABLE)
        assert list(restored.members) == [member]
        # The member carries on in its generation, as after a coordinator failover.
        assert heartbeat(client, group, 1, member) == ErrorCode.none
        assert commit(client, group, topic_name, 45, 1, member) == ErrorCode.none
        committed = consumer.committed([TopicPartition(topic_name, 0)], timeout=10)
        assert committed[0].offset == 45
    finally:
        consumer.close()


def test_a_join_parked_in_a_resigned_partition_gets_not_coordinator(
    broker: Broker, client: RawClient
) -> None:
    group = new_group()
    joined = join_fully(client, group)
    leader = joined.member_id
    assert sync(client, group, 1, leader, {leader: b"A"}).error_code == ErrorCode.none

    # A second member joins: the join phase waits (up to a minute) for the leader to rejoin.
    late = RawClient(broker.bootstrap)
    try:
        first = join(late, group)
        thread, result = in_background(lambda: join(late, group, first.member_id))
        wait_until(
            lambda: broker.call(lambda: broker.coordinator.pending_joins) == 1, what="a parked join"
        )

        assert broker.resign(broker.partition_of(group)) == 1
        thread.join(10)
        assert result and result[0].error_code == ErrorCode.not_coordinator
        assert broker.call(lambda: broker.coordinator.pending_joins) == 0
        assert heartbeat(client, group, 1, leader) == ErrorCode.not_coordinator
    finally:
        late.close()


def test_a_sync_parked_in_a_resigned_partition_gets_not_coordinator(
    broker: Broker, client: RawClient
) -> None:
    group = new_group()
    follower = RawClient(broker.bootstrap)
    try:
        leader_id = join_fully(client, group).member_id
        first = join(follower, group)
        thread, joined = in_background(lambda: join(follower, group, first.member_id))
        # Rejoining before that join is parked would only repeat generation 1's answer.
        wait_until(
            lambda: broker.call(lambda: broker.coordinator.pending_joins) == 1, what="a parked join"
        )
        rejoined = join(client, group, leader_id)
        thread.join(10)
        assert rejoined.generation_id == joined[0].generation_id == 2
        follower_id = joined[0].member_id

        # The follower waits for the leader's assignment, which never comes.
        thread, synced = in_background(lambda: sync(follower, group, 2, follower_id))
        wait_until(
            lambda: broker.call(
                lambda: broker.coordinator.groups[group].members[follower_id].awaiting_sync
            ),
            what="a parked sync",
        )
        assert broker.resign(broker.partition_of(group)) == 1
        thread.join(10)
        assert synced and synced[0].error_code == ErrorCode.not_coordinator
    finally:
        follower.close()


def test_resign_and_elect_are_idempotent_and_keep_to_their_partition(
    broker: Broker, client: RawClient, topic_name: str
) -> None:
    create_topic(broker.bootstrap, topic_name, 1)
    partitions = broker.call(lambda: broker.coordinator.store.partitions)
    moved = new_group()
    index = broker.partition_of(moved)
    stays = other_group(index, partitions)
    assert commit(client, moved, topic_name, 1) == ErrorCode.none
    assert commit(client, stays, topic_name, 2) == ErrorCode.none

    assert broker.resign(index) == 1
    assert broker.resign(index) == 0
    assert broker.group(stays) is not None
    assert fetch(client, stays) == (ErrorCode.none, {(topic_name, 0): 2})
    assert broker.call(lambda: broker.coordinator.list_groups()) == (
        ErrorCode.none,
        [(stays, "", "Empty", "classic")],
    )

    # Retention only looks at the groups served: past it, `stays` goes, `moved` is kept.
    week = 7 * 24 * 3600 * 1000
    broker.call(lambda: broker.coordinator.expire_offsets(now_ms() + week + 1000))
    assert fetch(client, stays) == (ErrorCode.none, {})

    assert broker.elect(index) == 1
    assert broker.elect(index) == 0
    assert fetch(client, moved) == (ErrorCode.none, {(topic_name, 0): 1})
    # Out of range: logged, not owned, no crash.
    assert broker.elect(partitions) == 0
    assert partitions not in broker.call(lambda: set(broker.coordinator.owned))


def test_a_coordinator_that_lost_leadership_does_not_append(
    broker: Broker, client: RawClient, topic_name: str
) -> None:
    create_topic(broker.bootstrap, topic_name, 1)
    simple, dynamic, static = new_group(), new_group(), new_group()
    dynamic_id = join_fully(client, dynamic).member_id
    static_id = join(client, static, instance="i-1").member_id
    assert (
        sync(client, static, 1, static_id, {static_id: b"S"}, instance="i-1").error_code
        == ErrorCode.none
    )

    def lead_offsets(node: int) -> None:
        # What the cluster does to a partition whose leadership moves, before the
        # broker resigns it.
        for partition in broker.runner.broker.partitions_of(OFFSETS_TOPIC):
            partition.leader = node

    end = broker.offsets_end()
    broker.call(lambda: lead_offsets(99))
    try:
        assert commit(client, simple, topic_name, 7) == ErrorCode.not_coordinator
        assert broker.group(simple) is None
        # The leader's SyncGroup stores the assignment: refused.
        synced = sync(client, dynamic, 1, dynamic_id, {dynamic_id: b"D"})
        assert synced.error_code == ErrorCode.not_coordinator
        # A static member rejoining a Stable group stores the group: refused.
        assert join(client, static, instance="i-1").error_code == ErrorCode.not_coordinator
        assert broker.offsets_end() == end
    finally:
        broker.call(lambda: lead_offsets(broker.runner.broker.node_id))
    assert commit(client, simple, topic_name, 7) == ErrorCode.none
    assert broker.offsets_end() == end + 1


class FakePartition:
    leader = 0

    def batches(self) -> Iterator[tuple[int, bytes]]:
        return iter(())


class FakeView:
    """A broker hosting some offsets partitions and no topic: a cluster member at start."""

    def __init__(self, hosted: set[int]) -> None:
        self.config = BrokerConfig(TEST_CONFIG)
        self.node_id = 0
        self.hosted = {index: FakePartition() for index in hosted}
        self.created: list[str] = []

    def partition(self, topic: str, index: int) -> FakePartition | None:
        return self.hosted.get(index) if topic == OFFSETS_TOPIC else None

    def partitions_of(self, topic: str) -> list[FakePartition]:
        return []

    def topic(self, name: str) -> None:
        return None

    def topic_names(self) -> list[str]:
        return []

    def create_topic(self, name: str, *args: object, **kwargs: object) -> None:
        self.created.append(name)
        raise AssertionError("a cluster-mode coordinator creates no topic")


def test_precheck_order_and_cluster_mode_start(caplog: pytest.LogCaptureFixture) -> None:
    group = "g"
    index = partition_for(group, 3)
    elsewhere = next(g for g in (f"g{i}" for i in range(100)) if partition_for(g, 3) != index)
    unhosted = next(i for i in range(3) if i != index)

    async def main() -> None:
        view = FakeView({index})
        coordinator = GroupCoordinator(view)  # type: ignore[arg-type]
        precheck = coordinator.precheck
        assert precheck(None) == ErrorCode.invalid_group_id
        assert precheck("") == ErrorCode.invalid_group_id
        assert precheck("", allow_empty=True) == ErrorCode.coordinator_load_in_progress
        assert precheck(group) == ErrorCode.coordinator_load_in_progress

        await coordinator.start(own_all=False)
        try:
            assert view.created == [] and coordinator.store.partitions == 0
            # Partition count unknown: no group is ours.
            assert precheck(None) == ErrorCode.invalid_group_id
            assert precheck(group) == ErrorCode.not_coordinator
            assert precheck("", allow_empty=True) == ErrorCode.not_coordinator
            assert coordinator.elect(index) == 0 and not coordinator.owned

            coordinator.set_partition_count(0)
            assert coordinator.store.partitions == 0
            coordinator.set_partition_count(3)
            assert precheck(group) == ErrorCode.not_coordinator
            with caplog.at_level(logging.WARNING, "kops.broker.groups"):
                coordinator.set_partition_count(5)
            assert coordinator.store.partitions == 3
            assert "cannot change" in caplog.text
            coordinator.set_partition_count(3)

            with caplog.at_level(logging.ERROR, "kops.broker.groups"):
                assert coordinator.elect(unhosted) == 0
            assert "does not host" in caplog.text and unhosted not in coordinator.owned

            assert coordinator.elect(index) == 0
            assert coordinator.owns(group) and not coordinator.owns(elsewhere)
            assert precheck(group) == ErrorCode.none
            assert precheck(elsewhere) == ErrorCode.not_coordinator
            coordinator.loading = True
            assert precheck(elsewhere) == ErrorCode.coordinator_load_in_progress
            coordinator.loading = False

            assert coordinator.resign(index) == 0 and coordinator.resign(index) == 0
            assert precheck(group) == ErrorCode.not_coordinator
        finally:
            await coordinator.stop()

    asyncio.run(main())
