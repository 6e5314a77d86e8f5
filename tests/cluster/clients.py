"""Client-side helpers for the cluster tests: raw Metadata per broker, topics, produce, consume.

Metadata goes to one named broker with a raw request (kops.protocol.client), so a
test sees what that broker answers; librdkafka's own metadata may come from any.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.errors import ErrorCode
from kio.schema.metadata import v8 as metadata_v8

from kops.client import topics_metadata_request
from kops.protocol.client import send_request
from kops.testing import wait_until
from tests.cluster.processes import Cluster, settle, wait_brokers

ALL_ACTIVE = {1: False, 2: False, 3: False}


def admin_client(cluster: Cluster, node: int) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.address(node)})


def partitions_seen_by(
    cluster: Cluster, node: int, topic: str
) -> dict[int, metadata_v8.response.MetadataResponsePartition] | None:
    """Partition -> Metadata entry (leader, epoch, replicas, ISR) as broker `node` itself
    answers (never auto-creating); None while it does not know the topic."""
    host, port = cluster.address(node).rsplit(":", 1)
    answer = send_request(host, int(port), topics_metadata_request([topic])).topics[0]
    if answer.error_code != ErrorCode.none:
        return None
    return {p.partition_index: p for p in answer.partitions}


def leaders_seen_by(cluster: Cluster, node: int, topic: str) -> dict[int, int] | None:
    """Partition -> leader as broker `node` answers Metadata; None while it lacks the topic."""
    partitions = partitions_seen_by(cluster, node, topic)
    if partitions is None:
        return None
    return {index: p.leader_id for index, p in partitions.items()}


def create(
    cluster: Cluster,
    node: int,
    topic: str,
    partitions: int,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    """Create through broker `node`; then wait until every live broker's Metadata has it."""
    client = admin_client(cluster, node)  # kept: the future dies with its client
    new = NewTopic(topic, partitions, replication_factor, config=config or {})
    client.create_topics([new])[topic].result(timeout=30)
    for other in cluster.live():
        wait_until(lambda other=other: leaders_seen_by(cluster, other, topic) is not None)


def ready(cluster: Cluster) -> int:
    """Settle the quorum with every broker active; a broker that is not the controller."""
    status = settle(cluster)
    wait_brokers(cluster, ALL_ACTIVE)
    return next(n for n in cluster.brokers if n != status.leader_id)


def produce(bootstrap: str, topic: str, count: int, prefix: str = "m") -> list[str]:
    """Produce `count` keyed records; every delivery report checked."""
    failures: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    values = [f"{prefix}{i}" for i in range(count)]
    for value in values:
        producer.produce(
            topic,
            value.encode(),
            key=value.encode(),
            on_delivery=lambda err, _msg: failures.append(err) if err else None,
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []
    return values


def consume_all(bootstrap: str, topic: str, expected: int, group: str) -> list[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: list[str] = []
    try:

        def more() -> bool:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    seen.append(msg.value().decode())
            return len(seen) >= expected

        wait_until(more, timeout=60)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return seen
