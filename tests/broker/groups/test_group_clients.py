"""Other clients against the coordinator: librdkafka's admin API for groups,
kafka-python and aiokafka group consumers (also mixed with librdkafka)."""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.broker.clients import create_topic, produce
from tests.broker.groups.group_helpers import GroupMember, new_group, wait_until

PARTITIONS = 6


def _records(n: int) -> list[tuple]:
    return [(f"k{i}".encode(), f"v{i}".encode(), None, i % PARTITIONS) for i in range(n)]


def test_admin_list_describe_offsets_and_delete(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    produce(kafka_broker, topic_name, _records(60))
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    group = new_group()
    member = GroupMember(
        kafka_broker, group, [topic_name], sync_commit=True, **{"client.id": "describe-me"}
    )
    try:
        wait_until(lambda: len(member.messages) == 60, what="the member to read everything")

        stable = admin.list_consumer_groups(states={ConsumerGroupState.STABLE}).result(10)
        assert group in {g.group_id for g in stable.valid}
        listing = next(g for g in stable.valid if g.group_id == group)
        assert listing.state == ConsumerGroupState.STABLE and not listing.is_simple_consumer_group
        empty = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result(10)
        assert group not in {g.group_id for g in empty.valid}

        description = admin.describe_consumer_groups([group])[group].result(10)
        assert description.state == ConsumerGroupState.STABLE
        assert description.partition_assignor == "range"
        [described] = description.members
        assert described.client_id == "describe-me"
        assert described.host.endswith("127.0.0.1")
        assert sorted(tp.partition for tp in described.assignment.topic_partitions) == list(
            range(PARTITIONS)
        )

        # A group with members cannot be deleted.
        with pytest.raises(Exception, match="NON_EMPTY_GROUP"):
            admin.delete_consumer_groups([group])[group].result(10)

        offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[
            group
        ].result(10)
        assert {(tp.partition, tp.offset) for tp in offsets.topic_partitions} == {
            (p, 10) for p in range(PARTITIONS)
        }
    finally:
        member.close()

    # Empty now: offsets can be altered (a simple commit) and the group deleted.
    wait_until(
        lambda: (
            admin.describe_consumer_groups([group])[group].result(10).state
            == ConsumerGroupState.EMPTY
        ),
        what="the group to become empty",
    )
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic_name, 0, 3)])]
    )[group].result(10)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic_name, 0)])
    assert (
        admin.list_consumer_group_offsets([request])[group].result(10).topic_partitions[0].offset
        == 3
    )
    admin.delete_consumer_groups([group])[group].result(10)
    listed = admin.list_consumer_groups().result(10)
    assert group not in {g.group_id for g in listed.valid}
    after = admin.list_consumer_group_offsets([request])[group].result(10)
    assert after.topic_partitions[0].offset < 0  # nothing committed any more


def test_kafka_python_group_consumer_with_librdkafka_peer(
    kafka_broker: str, topic_name: str
) -> None:
    kafka = pytest.importorskip("kafka")
    create_topic(kafka_broker, topic_name, PARTITIONS)
    produce(kafka_broker, topic_name, _records(120))
    group = new_group()
    consumer = kafka.KafkaConsumer(
        topic_name,
        bootstrap_servers=kafka_broker,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    peer = None
    try:
        seen = []
        deadline = time.monotonic() + 20
        while len(seen) < 120 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                seen.extend(r.value for r in records)
        assert len(seen) == 120
        consumer.commit()
        assert len(consumer.assignment()) == PARTITIONS

        # A librdkafka consumer joins the same group: the two clients split the topic.
        peer = GroupMember(kafka_broker, group, [topic_name])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            peer.partitions() and len(consumer.assignment()) < PARTITIONS
        ):
            consumer.poll(timeout_ms=100)
        mine = {tp.partition for tp in consumer.assignment()}
        assert mine and peer.partitions() and not mine & peer.partitions()
        assert mine | peer.partitions() == set(range(PARTITIONS))
        assert peer.messages == []  # everything was committed by kafka-python
    finally:
        consumer.close()
        if peer is not None:
            peer.close()


def test_aiokafka_group_consumers_share_and_resume(kafka_broker: str, topic_name: str) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    create_topic(kafka_broker, topic_name, PARTITIONS)
    produce(kafka_broker, topic_name, _records(120))
    group = new_group()

    def consumer():
        return aiokafka.AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=kafka_broker,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )

    async def run() -> tuple[list, list, list]:
        a, b = consumer(), consumer()
        await a.start()
        await b.start()
        got: dict[int, list] = {0: [], 1: []}
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (a.assignment() and b.assignment()):
                await asyncio.gather(a.getmany(timeout_ms=100), b.getmany(timeout_ms=100))
            split = (len(a.assignment()), len(b.assignment()))
            # Settled: now read, committing what each has processed.
            while sum(len(v) for v in got.values()) < 120 and time.monotonic() < deadline:
                batches = await asyncio.gather(a.getmany(timeout_ms=200), b.getmany(timeout_ms=200))
                for index, batch in enumerate(batches):
                    for records in batch.values():
                        got[index].extend(r.value for r in records)
                await asyncio.gather(a.commit(), b.commit())
        finally:
            await a.stop()
            await b.stop()
        produce(kafka_broker, topic_name, [(b"late", b"late", None, 0)])
        c = consumer()
        await c.start()
        late = []
        try:
            while not late and time.monotonic() < deadline + 10:
                for records in (await c.getmany(timeout_ms=200)).values():
                    late.extend(r.value for r in records)
        finally:
            await c.stop()
        return [split], got[0] + got[1], late

    [split], values, late = asyncio.run(run())
    assert split == (3, 3)
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(120))
    assert late == [b"late"]  # resumed from the commits: nothing re-read
