"""kafka-python's and aiokafka's transactional producers and read_committed consumers against
the bundled broker: a committed transaction is read once, an aborted one never, and offsets
sent to a transaction count only when it commits (confluent-kafka's are in
test_transactions.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.broker.clients import create_topic


def _committed_offset(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def test_kafka_python_transactions(kafka_broker: str, topic_name: str) -> None:
    kafka = pytest.importorskip("kafka")
    from kafka.structs import OffsetAndMetadata

    source = f"{topic_name}-src"
    create_topic(kafka_broker, topic_name, partitions=2)
    create_topic(kafka_broker, source)
    group = f"kp-{uuid.uuid4().hex[:6]}"
    producer = kafka.KafkaProducer(
        bootstrap_servers=kafka_broker, transactional_id=f"kp-{topic_name}"
    )
    producer.init_transactions()
    offsets = {kafka.TopicPartition(source, 0): OffsetAndMetadata(5, "", -1)}
    producer.begin_transaction()
    for i in range(10):
        producer.send(topic_name, value=f"aborted-{i}".encode(), partition=i % 2)
    producer.send_offsets_to_transaction(offsets, group)
    producer.flush()  # written before the abort, so the marker has records to hide
    producer.abort_transaction()
    assert _committed_offset(kafka_broker, group, source) < 0  # aborted: never the group's

    producer.begin_transaction()
    for i in range(10):
        producer.send(topic_name, value=f"committed-{i}".encode(), partition=i % 2)
    offsets = {kafka.TopicPartition(source, 0): OffsetAndMetadata(7, "", -1)}
    producer.send_offsets_to_transaction(offsets, group)
    producer.commit_transaction()
    producer.close()
    assert _committed_offset(kafka_broker, group, source) == 7

    def values(isolation_level: str) -> list[str]:
        """Every value in the topic, as a kafka-python reader with this isolation sees it."""
        consumer = kafka.KafkaConsumer(
            topic_name,
            bootstrap_servers=kafka_broker,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation_level,
            consumer_timeout_ms=5000,
        )
        try:
            return [m.value.decode() for m in consumer]
        finally:
            consumer.close()

    assert sorted(values("read_committed")) == sorted(f"committed-{i}" for i in range(10))
    # The aborted records are in the log: the reader's isolation level kept them out.
    assert {f"aborted-{i}" for i in range(10)} <= set(values("read_uncommitted"))


def test_aiokafka_transactions(kafka_broker: str, topic_name: str) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.structs import TopicPartition as AioTopicPartition

    source = f"{topic_name}-src"
    create_topic(kafka_broker, topic_name, partitions=2)
    create_topic(kafka_broker, source)
    group = f"aio-{uuid.uuid4().hex[:6]}"

    async def run() -> list[str]:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=kafka_broker, transactional_id=f"aio-{topic_name}"
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            for i in range(10):
                await producer.send(topic_name, f"aborted-{i}".encode(), partition=i % 2)
            await producer.send_offsets_to_transaction({AioTopicPartition(source, 0): 5}, group)
            await producer.flush()
            await producer.abort_transaction()
            async with producer.transaction():
                for i in range(10):
                    await producer.send(topic_name, f"committed-{i}".encode(), partition=i % 2)
                await producer.send_offsets_to_transaction({AioTopicPartition(source, 0): 7}, group)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=kafka_broker,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            group_id=f"reader-{group}",
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=5000, max_records=100)
            seen = [m.value.decode() for msgs in batches.values() for m in msgs]
            # The first fetch may miss a partition; read until both are at their end.
            while len(seen) < 10:
                more = await consumer.getmany(timeout_ms=2000, max_records=100)
                if not more:
                    break
                seen += [m.value.decode() for msgs in more.values() for m in msgs]
        finally:
            await consumer.stop()
        return seen

    seen = asyncio.run(run())
    assert sorted(seen) == sorted(f"committed-{i}" for i in range(10))
    assert _committed_offset(kafka_broker, group, source) == 7
