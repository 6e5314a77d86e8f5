"""Topics through the controller, across three real broker processes and real clients.

Any broker takes CreateTopics (and the other topic changes) and forwards it to
the active controller; every broker then opens the partitions assigned to it
and answers Metadata with the cluster's leaders. A request for a partition
another broker leads gets NOT_LEADER_OR_FOLLOWER; clients follow Metadata to
the leader. With replication factor 1 a partition whose broker is down has no
leader until it returns, with everything it had acknowledged.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic
from kio.schema.errors import ErrorCode
from kio.schema.list_offsets import v4
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import i8, i32, i64

from kops.protocol.client import send_request
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.clients import (
    ALL_ACTIVE,
    admin_client,
    consume_all,
    create,
    leaders_seen_by,
    produce,
    ready,
)
from tests.cluster.processes import Cluster, wait_brokers

pytestmark = requires_bundled_broker


def test_a_topic_created_on_any_broker_is_led_across_the_cluster(cluster: Cluster) -> None:
    follower = ready(cluster)
    client = admin_client(cluster, follower)
    futures = client.create_topics([NewTopic("spread", num_partitions=6, replication_factor=1)])
    futures["spread"].result(timeout=30)
    for node in cluster.brokers:
        wait_until(lambda node=node: leaders_seen_by(cluster, node, "spread") is not None)
    leaders = leaders_seen_by(cluster, follower, "spread")
    assert leaders is not None and sorted(leaders) == list(range(6))
    assert set(leaders.values()) == {1, 2, 3}, leaders
    for node in cluster.brokers:
        assert leaders_seen_by(cluster, node, "spread") == leaders

    again = client.create_topics([NewTopic("spread", num_partitions=1, replication_factor=1)])
    with pytest.raises(KafkaException) as exc:
        again["spread"].result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    replicated = client.create_topics([NewTopic("copies", num_partitions=1, replication_factor=4)])
    with pytest.raises(KafkaException) as exc:
        replicated["copies"].result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR


def test_records_go_to_their_leaders_and_a_group_reads_them_all(cluster: Cluster) -> None:
    follower = ready(cluster)
    create(cluster, follower, "orders", 6)
    sent = produce(cluster.address(1), "orders", 600)
    group = f"g-{uuid.uuid4().hex[:8]}"
    received = consume_all(cluster.address(2), "orders", len(sent), group)
    assert Counter(received) == Counter(sent)

    # Offsets were committed to the group's coordinator, wherever it is: a new
    # member of the group starts at the end.
    consumer = Consumer({"bootstrap.servers": cluster.address(3), "group.id": group})
    try:
        committed = consumer.committed([TopicPartition("orders", p) for p in range(6)], timeout=30)
    finally:
        consumer.close()
    assert sum(tp.offset for tp in committed) == len(sent)


def test_a_request_to_a_broker_that_does_not_lead_gets_not_leader_or_follower(
    cluster: Cluster,
) -> None:
    follower = ready(cluster)
    create(cluster, follower, "one", 1)
    leaders = leaders_seen_by(cluster, follower, "one")
    assert leaders is not None
    other = next(n for n in cluster.brokers if n != leaders[0])
    request = v4.ListOffsetsRequest(
        replica_id=BrokerId(-1),
        isolation_level=i8(0),
        topics=(
            v4.request.ListOffsetsTopic(
                name=TopicName("one"),
                partitions=(
                    v4.request.ListOffsetsPartition(
                        partition_index=i32(0), current_leader_epoch=i32(-1), timestamp=i64(-1)
                    ),
                ),
            ),
        ),
    )
    host, port = cluster.address(other).rsplit(":", 1)
    response = send_request(host, int(port), request)
    assert response.topics[0].partitions[0].error_code == ErrorCode.not_leader_or_follower


def test_topic_changes_through_a_follower_reach_every_broker(cluster: Cluster) -> None:
    follower = ready(cluster)
    client = admin_client(cluster, follower)
    client.create_topics([NewTopic("grow", num_partitions=2, replication_factor=1)])["grow"].result(
        timeout=30
    )
    client.create_partitions([NewPartitions("grow", 5)])["grow"].result(timeout=30)
    for node in cluster.brokers:
        wait_until(lambda node=node: len(leaders_seen_by(cluster, node, "grow") or {}) == 5)

    resource = ConfigResource("topic", "grow", set_config={"retention.ms": "123456"})
    client.alter_configs([resource])[resource].result(timeout=30)

    def retention(node: int) -> str:
        client = admin_client(cluster, node)
        described = client.describe_configs([ConfigResource("topic", "grow")])
        configs = next(iter(described.values())).result(timeout=30)
        return configs["retention.ms"].value

    for node in cluster.brokers:
        wait_until(lambda node=node: retention(node) == "123456")

    client.delete_topics(["grow"])["grow"].result(timeout=30)
    for node in cluster.brokers:
        wait_until(lambda node=node: leaders_seen_by(cluster, node, "grow") is None)
        wait_until(
            lambda node=node: not list(Path(cluster.root, f"node{node}").glob("grow-*")),
            timeout=20,
        )


def test_a_dead_leaders_partitions_wait_for_it_and_keep_what_it_acknowledged(
    cluster: Cluster,
) -> None:
    follower = ready(cluster)
    create(cluster, follower, "kept", 3)
    sent = produce(cluster.address(follower), "kept", 300)
    leaders = leaders_seen_by(cluster, follower, "kept")
    assert leaders is not None
    victim = leaders[0]
    survivor = next(n for n in cluster.brokers if n != victim)

    cluster.brokers[victim].kill()
    # Replication factor 1: no other replica may lead, so the partition has none.
    wait_until(lambda: (leaders_seen_by(cluster, survivor, "kept") or {}).get(0) == -1, timeout=20)

    cluster.brokers[victim].start()
    wait_brokers(cluster, ALL_ACTIVE)
    wait_until(
        lambda: (leaders_seen_by(cluster, survivor, "kept") or {}).get(0) == victim, timeout=20
    )
    received = consume_all(cluster.address(survivor), "kept", len(sent), "after-restart")
    assert Counter(received) == Counter(sent)
