"""Admin APIs through librdkafka's AdminClient."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from tests.broker.clients import create_topic, produce


@pytest.fixture
def admin(kafka_broker: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_broker})


def test_create_list_delete(admin: AdminClient, topic_name: str) -> None:
    admin.create_topics([NewTopic(topic_name, 4, 1, config={"retention.ms": "60000"})])[
        topic_name
    ].result(10)
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[topic_name].partitions) == 4
    with pytest.raises(KafkaException) as info:
        admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    assert info.value.args[0].name() == "TOPIC_ALREADY_EXISTS"
    admin.delete_topics([topic_name])[topic_name].result(10)
    assert topic_name not in admin.list_topics(timeout=10).topics


def test_invalid_topic_name_and_replication(admin: AdminClient) -> None:
    with pytest.raises(KafkaException) as info:
        admin.create_topics([NewTopic("bad name!", 1, 1)])["bad name!"].result(10)
    assert info.value.args[0].code() == 17  # INVALID_TOPIC_EXCEPTION
    with pytest.raises(KafkaException) as info:
        admin.create_topics([NewTopic("rf-three", 1, 3)])["rf-three"].result(10)
    assert info.value.args[0].name() == "INVALID_REPLICATION_FACTOR"


def test_create_partitions(admin: AdminClient, topic_name: str) -> None:
    admin.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result(10)
    admin.create_partitions([NewPartitions(topic_name, 5)])[topic_name].result(10)
    assert len(admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions) == 5
    with pytest.raises(KafkaException):
        admin.create_partitions([NewPartitions(topic_name, 3)])[topic_name].result(10)


def test_describe_and_alter_configs(admin: AdminClient, topic_name: str) -> None:
    admin.create_topics([NewTopic(topic_name, 1, 1, config={"retention.ms": "3600000"})])[
        topic_name
    ].result(10)
    resource = ConfigResource("topic", topic_name)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].is_default

    change = ConfigResource(
        "topic",
        topic_name,
        incremental_configs=[
            ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    admin.incremental_alter_configs([change])[change].result(10)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "7200000"
    assert configs["segment.bytes"].value == "1048576"

    bad = ConfigResource(
        "topic",
        topic_name,
        incremental_configs=[
            ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as info:
        admin.incremental_alter_configs([bad])[bad].result(10)
    assert info.value.args[0].name() == "INVALID_CONFIG"


def test_delete_records_advances_log_start(
    admin: AdminClient, kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name)
    produce(kafka_broker, topic_name, [(None, str(i).encode()) for i in range(50)])
    result = admin.delete_records([TopicPartition(topic_name, 0, 20)])
    low = next(iter(result.values())).result(10)
    assert low.low_watermark == 20
    consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": "dr"})
    assert consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (20, 50)
    consumer.close()
