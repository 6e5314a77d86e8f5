"""Committed offsets: fencing, metadata, OffsetFetch/OffsetDelete, placement in
`__consumer_offsets`, and surviving broker restarts (clean and SIGKILL)."""

from __future__ import annotations

import datetime
import struct
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from kio.schema.errors import ErrorCode
from kio.schema.heartbeat.v3.request import HeartbeatRequest
from kio.schema.join_group.v5.request import JoinGroupRequest, JoinGroupRequestProtocol
from kio.schema.leave_group.v3.request import LeaveGroupRequest, MemberIdentity
from kio.schema.offset_commit.v7.request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from kio.schema.offset_delete.v0.request import (
    OffsetDeleteRequest,
    OffsetDeleteRequestPartition,
    OffsetDeleteRequestTopic,
)
from kio.schema.offset_fetch.v1.request import OffsetFetchRequest as OffsetFetchV1
from kio.schema.offset_fetch.v1.request import OffsetFetchRequestTopic as OffsetFetchTopicV1
from kio.schema.offset_fetch.v5.request import OffsetFetchRequest, OffsetFetchRequestTopic
from kio.schema.sync_group.v3.request import SyncGroupRequest, SyncGroupRequestAssignment

from kops.broker.groups.group import now_ms
from kops.broker.groups.storage import (
    OFFSETS_TOPIC,
    NotCoordinatorError,
    java_string_hash,
    partition_for,
    write_error,
)
from kops.broker.log.config import InvalidProducerEpochError
from kops.broker.runner import BrokerThread
from kops.testing import TEST_CONFIG, BrokerProcess
from tests.broker.clients import create_topic, produce
from tests.broker.groups.group_helpers import GroupMember, RawClient, new_group, wait_until

SECONDS_6 = datetime.timedelta(seconds=6)


def subscription(*topics: str) -> bytes:
    """ConsumerProtocolSubscription v0: version, [topics], null user data."""
    out = struct.pack(">hi", 0, len(topics))
    for topic in topics:
        out += struct.pack(">h", len(topic)) + topic.encode()
    return out + struct.pack(">i", -1)


def join(
    client: RawClient,
    group: str,
    member_id: str = "",
    topic: str = "t",
    instance: str | None = None,
):
    return client.send(
        JoinGroupRequest(
            group_id=group,
            session_timeout=SECONDS_6,
            rebalance_timeout=SECONDS_6,
            member_id=member_id,
            group_instance_id=instance,
            protocol_type="consumer",
            protocols=(JoinGroupRequestProtocol(name="range", metadata=subscription(topic)),),
        )
    )


def join_fully(client: RawClient, group: str, topic: str = "t"):
    first = join(client, group, topic=topic)
    assert first.error_code == ErrorCode.member_id_required and first.member_id
    return join(client, group, first.member_id, topic=topic)


def sync(
    client: RawClient, group: str, generation: int, member_id: str, assignments: dict | None = None
):
    return client.send(
        SyncGroupRequest(
            group_id=group,
            generation_id=generation,
            member_id=member_id,
            assignments=tuple(
                SyncGroupRequestAssignment(member_id=m, assignment=a)
                for m, a in (assignments or {}).items()
            ),
        )
    )


def commit(
    client: RawClient,
    group: str,
    generation: int,
    member_id: str,
    topic: str,
    offset: int,
    metadata="m",
):
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
                            committed_leader_epoch=3,
                            committed_metadata=metadata,
                        ),
                    ),
                ),
            ),
        )
    )
    return response.topics[0].partitions[0].error_code


def heartbeat(client: RawClient, group: str, generation: int, member_id: str) -> int:
    return client.send(
        HeartbeatRequest(group_id=group, generation_id=generation, member_id=member_id)
    ).error_code


def fetch_all(client: RawClient, group: str) -> dict:
    response = client.send(OffsetFetchRequest(group_id=group, topics=None))
    assert response.error_code == ErrorCode.none
    return {
        (t.name, p.partition_index): (p.committed_offset, p.committed_leader_epoch, p.metadata)
        for t in response.topics
        for p in t.partitions
    }


def test_java_string_hash_placement() -> None:
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("") == 0
    # hashCode() == Integer.MIN_VALUE, which Kafka's Utils.abs maps to 0.
    assert java_string_hash("polygenelubricants") == -(1 << 31)
    assert partition_for("polygenelubricants", 50) == 0
    assert partition_for("hello", 50) == 99162322 % 50


def test_a_failed_offsets_write_answers_what_the_client_must_do() -> None:
    # Look up the coordinator again; fenced for good (a zombie's TxnOffsetCommit on a
    # broker that is not its transaction coordinator); retry here.
    assert write_error(NotCoordinatorError("moved"), "commit") == ErrorCode.not_coordinator
    fenced = InvalidProducerEpochError("epoch 3 older than 4")
    assert write_error(fenced, "commit") == ErrorCode.producer_fenced
    assert write_error(OSError("disk"), "commit") == ErrorCode.coordinator_not_available


def test_generation_fencing_of_commits_and_heartbeats(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, 1)
    group = new_group()
    a, b = RawClient(kafka_broker), RawClient(kafka_broker)
    try:
        joined = join_fully(a, group, topic_name)
        assert joined.error_code == ErrorCode.none and joined.generation_id == 1
        assert joined.leader == joined.member_id and [m.member_id for m in joined.members] == [
            joined.member_id
        ]
        a_id = joined.member_id
        assert sync(a, group, 1, a_id, {a_id: b"A"}).assignment == b"A"

        assert commit(a, group, 1, a_id, topic_name, 5) == ErrorCode.none
        assert commit(a, group, 0, a_id, topic_name, 6) == ErrorCode.illegal_generation
        assert commit(a, group, 1, "someone-else", topic_name, 6) == ErrorCode.unknown_member_id
        # A "simple" commit is only for groups without members.
        assert commit(a, group, -1, "", topic_name, 6) == ErrorCode.unknown_member_id

        # b joins: the group prepares a rebalance and waits for a to rejoin.
        b_result: list = []
        first = join(b, group, topic=topic_name)
        thread = threading.Thread(
            target=lambda: b_result.append(join(b, group, first.member_id, topic=topic_name))
        )
        thread.start()
        wait = threading.Event()
        wait.wait(0.3)
        assert heartbeat(a, group, 1, a_id) == ErrorCode.rebalance_in_progress
        # Commits of the current generation are still accepted while preparing.
        assert commit(a, group, 1, a_id, topic_name, 7) == ErrorCode.none

        rejoined = join(a, group, a_id, topic=topic_name)
        thread.join(10)
        assert rejoined.generation_id == 2 and b_result[0].generation_id == 2
        assert len(rejoined.members) == 2 and b_result[0].members == ()
        b_id = b_result[0].member_id
        # Between JoinGroup and SyncGroup: the stale generation is fenced and the
        # new one has to wait for its assignment.
        assert commit(a, group, 1, a_id, topic_name, 8) == ErrorCode.illegal_generation
        assert commit(a, group, 2, a_id, topic_name, 8) == ErrorCode.rebalance_in_progress
        assert heartbeat(a, group, 1, a_id) == ErrorCode.illegal_generation

        assert sync(a, group, 2, a_id, {a_id: b"A2", b_id: b"B2"}).assignment == b"A2"
        assert sync(b, group, 2, b_id).assignment == b"B2"
        assert commit(b, group, 2, b_id, topic_name, 9) == ErrorCode.none
        assert fetch_all(a, group)[(topic_name, 0)] == (9, 3, "m")

        # Leaving: the last member out empties the group; simple commits work again.
        a.send(LeaveGroupRequest(group_id=group, members=(MemberIdentity(member_id=a_id),)))
        b.send(LeaveGroupRequest(group_id=group, members=(MemberIdentity(member_id=b_id),)))
        assert heartbeat(b, group, 2, b_id) == ErrorCode.unknown_member_id
        assert commit(b, group, 2, b_id, topic_name, 10) == ErrorCode.unknown_member_id
        assert commit(b, group, -1, "", topic_name, 10) == ErrorCode.none
    finally:
        a.close()
        b.close()


def test_static_member_replacement_fences_the_old_instance(
    kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name, 1)
    group = new_group()
    old, new = RawClient(kafka_broker), RawClient(kafka_broker)
    try:
        # Static members skip MEMBER_ID_REQUIRED.
        first = join(old, group, topic=topic_name, instance="inst-1")
        assert first.error_code == ErrorCode.none and first.generation_id == 1
        assert (
            sync(old, group, 1, first.member_id, {first.member_id: b"P"}).error_code
            == ErrorCode.none
        )

        second = join(new, group, topic=topic_name, instance="inst-1")
        # Same generation, no rebalance; the old leader id is returned so the
        # restarted member does not compute a new assignment.
        assert second.error_code == ErrorCode.none and second.generation_id == 1
        assert second.member_id != first.member_id and second.leader == first.member_id
        assert sync(new, group, 1, second.member_id).assignment == b"P"

        hb = HeartbeatRequest(
            group_id=group, generation_id=1, member_id=first.member_id, group_instance_id="inst-1"
        )
        assert old.send(hb).error_code == ErrorCode.fenced_instance_id
        assert heartbeat(new, group, 1, second.member_id) == ErrorCode.none
    finally:
        old.close()
        new.close()


def test_offset_fetch_metadata_all_partitions_and_delete(
    kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name, 1)
    group = new_group()
    client = RawClient(kafka_broker)
    try:
        metadata = 'checkpoint: {"batch": 7} ✓'
        assert commit(client, group, -1, "", topic_name, 42, metadata) == ErrorCode.none
        assert (
            commit(client, group, -1, "", "no-such-topic", 1)
            == ErrorCode.unknown_topic_or_partition
        )
        assert (
            commit(client, group, -1, "", topic_name, 43, "x" * 5000)
            == ErrorCode.offset_metadata_too_large
        )
        assert fetch_all(client, group) == {(topic_name, 0): (42, 3, metadata)}

        v1 = client.send(
            OffsetFetchV1(
                group_id=group,
                topics=(OffsetFetchTopicV1(name=topic_name, partition_indexes=(0, 1)),),
            )
        )
        got = {p.partition_index: (p.committed_offset, p.metadata) for p in v1.topics[0].partitions}
        assert got == {0: (42, metadata), 1: (-1, "")}
        named = client.send(
            OffsetFetchRequest(
                group_id=group,
                topics=(OffsetFetchRequestTopic(name=topic_name, partition_indexes=(0,)),),
            )
        )
        assert named.topics[0].partitions[0].committed_offset == 42

        # An Empty group's offsets can be deleted.
        deleted = client.send(
            OffsetDeleteRequest(
                group_id=group,
                topics=(
                    OffsetDeleteRequestTopic(
                        name=topic_name,
                        partitions=(OffsetDeleteRequestPartition(partition_index=0),),
                    ),
                ),
            )
        )
        assert deleted.error_code == ErrorCode.none
        assert deleted.topics[0].partitions[0].error_code == ErrorCode.none
        assert fetch_all(client, group) == {}
    finally:
        client.close()


def test_offset_delete_refuses_subscribed_topics(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, 1)
    create_topic(kafka_broker, topic_name + "-other", 1)
    group = new_group()
    client = RawClient(kafka_broker)
    try:
        joined = join_fully(client, group, topic_name)
        sync(client, group, 1, joined.member_id, {joined.member_id: b""})
        assert commit(client, group, 1, joined.member_id, topic_name, 1) == ErrorCode.none
        assert (
            commit(client, group, 1, joined.member_id, topic_name + "-other", 1) == ErrorCode.none
        )

        def delete(topic: str) -> int:
            response = client.send(
                OffsetDeleteRequest(
                    group_id=group,
                    topics=(
                        OffsetDeleteRequestTopic(
                            name=topic,
                            partitions=(OffsetDeleteRequestPartition(partition_index=0),),
                        ),
                    ),
                )
            )
            assert response.error_code == ErrorCode.none
            return response.topics[0].partitions[0].error_code

        assert delete(topic_name) == ErrorCode.group_subscribed_to_topic
        assert delete(topic_name + "-other") == ErrorCode.none
        assert set(fetch_all(client, group)) == {(topic_name, 0)}
        missing = client.send(OffsetDeleteRequest(group_id="no-such-group", topics=()))
        assert missing.error_code == ErrorCode.group_id_not_found
    finally:
        client.close()


def _consume(bootstrap: str, group: str, topic: str, count: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    got = []
    try:
        while len(got) < count:
            msg = consumer.poll(10)
            assert msg is not None, f"only {len(got)} of {count} records arrived"
            assert msg.error() is None, msg.error()
            got.append(msg)
            consumer.commit(
                offsets=[
                    TopicPartition(
                        topic, msg.partition(), msg.offset() + 1, f"after {msg.offset()}"
                    )
                ],
                asynchronous=False,
            )
    finally:
        consumer.close()
    return got


def _committed(bootstrap: str, group: str, topic: str) -> tuple[int, str | None]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset, tp.metadata
    finally:
        consumer.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_committed_offsets_survive_broker_restart(tmp_path, topic_name: str, how: str) -> None:
    broker = BrokerProcess(tmp_path)
    bootstrap = broker.start()
    group = new_group()
    try:
        create_topic(bootstrap, topic_name, 1)
        produce(bootstrap, topic_name, [(None, f"v{i}".encode()) for i in range(30)])
        assert [m.offset() for m in _consume(bootstrap, group, topic_name, 10)] == list(range(10))
        # The commits went to the group's own partition of __consumer_offsets.
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
        low, high = probe.get_watermark_offsets(
            TopicPartition(OFFSETS_TOPIC, partition_for(group, 50)), timeout=10
        )
        probe.close()
        assert high - low >= 10

        broker.stop() if how == "stop" else broker.kill()
        assert broker.start() == bootstrap

        assert _committed(bootstrap, group, topic_name) == (10, "after 9")
        resumed = _consume(bootstrap, group, topic_name, 10)
        assert [m.offset() for m in resumed] == list(range(10, 20))
        broker.stop() if how == "stop" else broker.kill()
        broker.start()
        assert _committed(bootstrap, group, topic_name) == (20, "after 19")
    finally:
        broker.stop()


def test_member_rides_through_a_broker_restart_without_rebalancing(
    tmp_path, topic_name: str
) -> None:
    """Group metadata is reloaded too: a live member keeps its generation and assignment."""
    broker = BrokerProcess(tmp_path)
    bootstrap = broker.start()
    group = new_group()
    member = None
    try:
        create_topic(bootstrap, topic_name, 2)
        produce(bootstrap, topic_name, [(None, f"a{i}".encode(), None, i % 2) for i in range(20)])
        member = GroupMember(bootstrap, group, [topic_name], sync_commit=True)
        wait_until(lambda: len(member.messages) == 20, what="the first records")
        broker.kill()
        broker.start()
        produce(bootstrap, topic_name, [(None, f"b{i}".encode(), None, i % 2) for i in range(20)])
        wait_until(
            lambda: len(member.messages) == 40, what="the records produced after the restart"
        )
        time.sleep(1)  # room for a duplicate or a rebalance to show up
        assert len(member.messages) == 40
        assert len(member.assigned) == 1 and member.revoked == []
    finally:
        if member is not None:
            member.close()
        broker.stop()


def test_offsets_of_deleted_topics_and_idle_groups_expire(tmp_path, topic_name: str) -> None:
    runner = BrokerThread(tmp_path, config=TEST_CONFIG)
    bootstrap = runner.start()
    client = RawClient(bootstrap)
    group = new_group()
    try:
        create_topic(bootstrap, topic_name, 1)
        create_topic(bootstrap, topic_name + "-gone", 1)
        assert commit(client, group, -1, "", topic_name, 1) == ErrorCode.none
        assert commit(client, group, -1, "", topic_name + "-gone", 2) == ErrorCode.none
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.delete_topics([topic_name + "-gone"])[topic_name + "-gone"].result(10)

        coordinator = runner.broker.groups
        runner.call(lambda: coordinator.expire_offsets(now_ms()))
        assert set(fetch_all(client, group)) == {(topic_name, 0)}

        # Empty for longer than offsets.retention.minutes (7 days): the group goes.
        week = 7 * 24 * 3600 * 1000
        runner.call(lambda: coordinator.expire_offsets(now_ms() + week + 1000))
        assert fetch_all(client, group) == {}
        assert group not in runner.call(lambda: set(coordinator.groups))
    finally:
        client.close()
        runner.stop()
