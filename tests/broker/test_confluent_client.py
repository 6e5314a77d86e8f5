"""librdkafka (confluent-kafka) against the bundled broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.broker.clients import consume_all, create_topic, produce


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_keys_headers_compression(
    kafka_broker: str, topic_name: str, codec: str
) -> None:
    create_topic(kafka_broker, topic_name, partitions=3)
    records = [
        (
            f"key-{i}".encode(),
            f"value-{i}".encode() * (i % 7 + 1),
            [("h", f"{i}".encode()), ("empty", b"")],
            i % 3,
        )
        for i in range(300)
    ]
    delivered = produce(kafka_broker, topic_name, records, **{"compression.type": codec})
    assert len(delivered) == 300

    messages = consume_all(kafka_broker, topic_name, 300, partitions=3)
    assert len(messages) == 300
    by_key = {m.key(): m for m in messages}
    for key, value, headers, partition in records:
        msg = by_key[key]
        assert msg.value() == value
        assert msg.headers() == headers
        assert msg.partition() == partition
    for partition in range(3):
        offsets = [m.offset() for m in messages if m.partition() == partition]
        assert offsets == list(range(100))


def test_null_key_and_value_round_trip(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    produce(kafka_broker, topic_name, [(None, b"v"), (b"k", None)])
    messages = consume_all(kafka_broker, topic_name, 2)
    assert [(m.key(), m.value()) for m in messages] == [(None, b"v"), (b"k", None)]


def test_offsets_for_times(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    producer = Producer({"bootstrap.servers": kafka_broker, "linger.ms": 0})
    base = 1_700_000_000_000
    for i in range(10):
        producer.produce(topic_name, value=str(i).encode(), timestamp=base + i * 1000)
        producer.flush(10)  # one batch per record so each has its own timestamp
    consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": "x"})
    wanted = [TopicPartition(topic_name, 0, base + 4500)]
    found = consumer.offsets_for_times(wanted, timeout=10)
    assert found[0].offset == 5
    after_end = consumer.offsets_for_times(
        [TopicPartition(topic_name, 0, base + 99_000)], timeout=10
    )
    assert after_end[0].offset == -1
    low, high = consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    assert (low, high) == (0, 10)
    consumer.close()


def test_idempotent_producer(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, partitions=2)
    records = [(str(i).encode(), str(i).encode(), None, i % 2) for i in range(2000)]
    delivered = produce(
        kafka_broker, topic_name, records, **{"enable.idempotence": True, "linger.ms": 1}
    )
    assert len(delivered) == 2000
    messages = consume_all(kafka_broker, topic_name, 2000, partitions=2)
    assert sorted(int(m.value()) for m in messages) == list(range(2000))


def test_fetch_waits_and_wakes_on_produce(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker,
            "group.id": "w",
            "fetch.wait.max.ms": 5000,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    assert consumer.poll(1.0) is None  # nothing there yet: the fetch parks on the broker
    producer = Producer({"bootstrap.servers": kafka_broker, "linger.ms": 0})
    sent = time.monotonic()
    producer.produce(topic_name, value=b"wake")
    producer.flush(10)
    msg = None
    while msg is None and time.monotonic() - sent < 5:
        msg = consumer.poll(0.1)
    waited = time.monotonic() - sent
    assert msg is not None and msg.value() == b"wake"
    # Far below fetch.wait.max.ms: the produce completed the parked fetch.
    assert waited < 2.5
    consumer.close()


def test_unknown_partition_is_reported(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    producer = Producer({"bootstrap.servers": kafka_broker, "message.timeout.ms": 3000})
    errors = []
    try:
        producer.produce(
            topic_name, value=b"x", partition=7, on_delivery=lambda err, msg: errors.append(err)
        )
        producer.flush(10)
    except KafkaException as exc:
        errors.append(exc.args[0])
    assert len(errors) == 1 and errors[0] is not None
    assert "partition" in str(errors[0]).lower()


def test_clients_cannot_produce_to_internal_topics(kafka_broker: str) -> None:
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": kafka_broker}).list_topics(timeout=10).topics
    assert "__consumer_offsets" in topics
    producer = Producer(
        {"bootstrap.servers": kafka_broker, "message.timeout.ms": 5000, "retries": 0}
    )
    errors = []
    producer.produce(
        "__consumer_offsets", value=b"x", partition=0, on_delivery=lambda e, m: errors.append(e)
    )
    producer.flush(10)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == 17  # INVALID_TOPIC_EXCEPTION
