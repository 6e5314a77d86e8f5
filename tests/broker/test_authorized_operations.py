"""Authorized-operations bit fields (KIP-430) and DescribeTopicPartitions (KIP-966).

librdkafka's describe_cluster, describe_topics (through Metadata v8: librdkafka
does not send DescribeTopicPartitions) and describe_consumer_groups, and raw
requests for DescribeTopicPartitions and what the clients leave out.

With no authorizer a Kafka broker reports every operation the resource type
supports (AclEntry.supportedOperations), and -2147483648 when not asked:

- topic: READ WRITE CREATE DELETE ALTER DESCRIBE DESCRIBE_CONFIGS ALTER_CONFIGS
- cluster: CREATE ALTER DESCRIBE CLUSTER_ACTION DESCRIBE_CONFIGS ALTER_CONFIGS
  IDEMPOTENT_WRITE (the token operations belong to USER resources)
- group: READ DELETE DESCRIBE
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicCollection, TopicPartition
from confluent_kafka.admin import AclOperation, AdminClient
from kio.schema.describe_cluster import v0 as describe_cluster_v0
from kio.schema.describe_groups import v3 as describe_groups_v3
from kio.schema.describe_topic_partitions import v0 as dtp
from kio.schema.errors import ErrorCode
from kio.schema.metadata import v8 as metadata_v8

from kops.protocol.client import send_request
from tests.broker.clients import create_topic

NOT_REQUESTED = -2147483648
TOPIC_OPS = {
    AclOperation.READ,
    AclOperation.WRITE,
    AclOperation.CREATE,
    AclOperation.DELETE,
    AclOperation.ALTER,
    AclOperation.DESCRIBE,
    AclOperation.DESCRIBE_CONFIGS,
    AclOperation.ALTER_CONFIGS,
}
CLUSTER_OPS = {
    AclOperation.CREATE,
    AclOperation.ALTER,
    AclOperation.DESCRIBE,
    AclOperation.CLUSTER_ACTION,
    AclOperation.DESCRIBE_CONFIGS,
    AclOperation.ALTER_CONFIGS,
    AclOperation.IDEMPOTENT_WRITE,
}
GROUP_OPS = {AclOperation.READ, AclOperation.DELETE, AclOperation.DESCRIBE}


def bits(operations: set[AclOperation]) -> int:
    return sum(1 << op.value for op in operations)


def raw(bootstrap: str, request: object) -> object:
    host, _, port = bootstrap.rpartition(":")
    return send_request(host, int(port), request, timeout=10)  # type: ignore[arg-type]


@pytest.fixture
def admin(kafka_broker: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_broker})


def test_bit_values() -> None:
    assert bits(TOPIC_OPS) == 3576
    assert bits(CLUSTER_OPS) == 8096
    assert bits(GROUP_OPS) == 328


def test_describe_cluster(admin: AdminClient, kafka_broker: str) -> None:
    described = admin.describe_cluster(include_authorized_operations=True).result(10)
    assert set(described.authorized_operations) == CLUSTER_OPS
    assert admin.describe_cluster().result(10).authorized_operations is None

    for asked, expected in ((True, bits(CLUSTER_OPS)), (False, NOT_REQUESTED)):
        request = describe_cluster_v0.DescribeClusterRequest(
            include_cluster_authorized_operations=asked
        )
        assert raw(kafka_broker, request).cluster_authorized_operations == expected  # type: ignore[attr-defined]


def test_describe_topics(admin: AdminClient, kafka_broker: str, topic_name: str) -> None:
    # librdkafka (2.16) describes topics with Metadata, not DescribeTopicPartitions.
    create_topic(kafka_broker, topic_name, partitions=3)
    futures = admin.describe_topics(
        TopicCollection([topic_name]), include_authorized_operations=True
    )
    described = futures[topic_name].result(10)
    assert set(described.authorized_operations) == TOPIC_OPS
    assert [p.id for p in described.partitions] == [0, 1, 2]
    plain = admin.describe_topics(TopicCollection([topic_name]))[topic_name].result(10)
    assert plain.authorized_operations is None


def test_metadata_v8(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    topics = tuple(metadata_v8.request.MetadataRequestTopic(name=n) for n in (topic_name, missing))
    for asked_topic, asked_cluster in ((True, True), (True, False), (False, True), (False, False)):
        request = metadata_v8.MetadataRequest(
            topics=topics,
            allow_auto_topic_creation=False,
            include_cluster_authorized_operations=asked_cluster,
            include_topic_authorized_operations=asked_topic,
        )
        response = raw(kafka_broker, request)
        by_name = {t.name: t for t in response.topics}  # type: ignore[attr-defined]
        assert by_name[missing].error_code == ErrorCode.unknown_topic_or_partition
        expected_topic = bits(TOPIC_OPS) if asked_topic else NOT_REQUESTED
        # Every topic answered carries the field, the unknown one too (as Kafka).
        assert by_name[topic_name].topic_authorized_operations == expected_topic
        assert by_name[missing].topic_authorized_operations == expected_topic
        expected_cluster = bits(CLUSTER_OPS) if asked_cluster else NOT_REQUESTED
        assert response.cluster_authorized_operations == expected_cluster  # type: ignore[attr-defined]


def test_describe_consumer_groups(admin: AdminClient, kafka_broker: str, topic_name: str) -> None:
    group = f"ops-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic_name)
    consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic_name, 0, 0)], asynchronous=False)
    consumer.close()
    described = admin.describe_consumer_groups([group], include_authorized_operations=True)
    assert set(described[group].result(10).authorized_operations) == GROUP_OPS
    plain = admin.describe_consumer_groups([group])[group].result(10)
    assert plain.authorized_operations is None

    unknown = f"ops-unknown-{uuid.uuid4().hex[:8]}"
    for asked, expected in ((True, bits(GROUP_OPS)), (False, NOT_REQUESTED)):
        request = describe_groups_v3.DescribeGroupsRequest(
            groups=(group, unknown), include_authorized_operations=asked
        )
        response = raw(kafka_broker, request)
        states = {g.group_id: (g.group_state, g.authorized_operations) for g in response.groups}  # type: ignore[attr-defined]
        # An unknown group is described as Dead without an error, so it gets the field too.
        assert states == {group: ("Empty", expected), unknown: ("Dead", expected)}


# ---- DescribeTopicPartitions ------------------------------------------------------------


def dtp_request(
    names: list[str], limit: int = 2000, cursor: tuple[str, int] | None = None
) -> dtp.DescribeTopicPartitionsRequest:
    return dtp.DescribeTopicPartitionsRequest(
        topics=tuple(dtp.request.TopicRequest(name=n) for n in names),
        response_partition_limit=limit,
        cursor=None
        if cursor is None
        else dtp.request.Cursor(topic_name=cursor[0], partition_index=cursor[1]),
    )


def page(
    bootstrap: str, names: list[str], limit: int = 2000, cursor: tuple[str, int] | None = None
) -> tuple[list[tuple[str, ErrorCode, list[int]]], tuple[str, int] | None]:
    """([(topic, error, partition indexes)], next cursor)."""
    response = raw(bootstrap, dtp_request(names, limit, cursor))
    topics = []
    for t in response.topics:  # type: ignore[attr-defined]
        assert t.topic_authorized_operations == bits(TOPIC_OPS)
        topics.append((t.name, t.error_code, [p.partition_index for p in t.partitions]))
    nxt = response.next_cursor  # type: ignore[attr-defined]
    return topics, None if nxt is None else (nxt.topic_name, nxt.partition_index)


@pytest.fixture
def three_topics(kafka_broker: str) -> list[str]:
    prefix = f"dtp-{uuid.uuid4().hex[:8]}-"
    names = [prefix + "a", prefix + "b", prefix + "c"]
    for name, partitions in zip(names, (5, 1, 3), strict=True):
        create_topic(kafka_broker, name, partitions=partitions)
    return names


def test_describe_topic_partitions_pages(kafka_broker: str, three_topics: list[str]) -> None:
    a, b, c = three_topics
    missing, bad = a[:-1] + "missing", "bad name!"
    ok, unknown, invalid = (
        ErrorCode.none,
        ErrorCode.unknown_topic_or_partition,
        ErrorCode.invalid_topic_exception,
    )
    # Name order whatever the request's order; each topic once.
    everything = [missing, c, a, bad, b, a]
    assert page(kafka_broker, everything) == (
        [(bad, invalid, []), (a, ok, [0, 1, 2, 3, 4]), (b, ok, [0]), (c, ok, [0, 1, 2]),
         (missing, unknown, [])],
        None,
    )  # fmt: skip
    # Four partitions a page: the cursor walks through a, b and c.
    assert page(kafka_broker, everything, limit=4) == (
        [(bad, invalid, []), (a, ok, [0, 1, 2, 3])],
        (a, 4),
    )
    assert page(kafka_broker, everything, limit=4, cursor=(a, 4)) == (
        [(a, ok, [4]), (b, ok, [0]), (c, ok, [0, 1])],
        (c, 2),
    )
    assert page(kafka_broker, everything, limit=4, cursor=(c, 2)) == (
        [(c, ok, [2]), (missing, unknown, [])],
        None,
    )
    # The limit used up exactly at a topic's end: the next topic starts the next page.
    assert page(kafka_broker, [a, b], limit=5) == ([(a, ok, [0, 1, 2, 3, 4])], (b, 0))
    # A limit below one is one.
    assert page(kafka_broker, [b, c], limit=0) == ([(b, ok, [0])], (c, 0))


def test_describe_topic_partitions_cursor_must_be_named(
    kafka_broker: str, three_topics: list[str]
) -> None:
    a, b, c = three_topics
    response = raw(kafka_broker, dtp_request([c, a], cursor=(b, 0)))
    assert [(t.name, t.error_code, t.partitions) for t in response.topics] == [  # type: ignore[attr-defined]
        (c, ErrorCode.invalid_request, ()),
        (a, ErrorCode.invalid_request, ()),
    ]


def test_describe_topic_partitions_all_topics(kafka_broker: str, three_topics: list[str]) -> None:
    a, b, c = three_topics
    topics, cursor = page(kafka_broker, [])
    names = [name for name, _, _ in topics]
    assert names == sorted(names) and cursor is None
    assert {a, b, c} <= set(names)
    assert all(error == ErrorCode.none for _, error, _ in topics)
    # From a cursor: nothing before it.
    topics, _ = page(kafka_broker, [], cursor=(b, 0))
    assert [name for name, _, _ in topics][:2] == [b, c]
    # The topic's id (Metadata v8 has none to compare with), leader and replicas.
    (topic,) = raw(kafka_broker, dtp_request([a])).topics  # type: ignore[attr-defined]
    (again,) = raw(kafka_broker, dtp_request([a])).topics  # type: ignore[attr-defined]
    assert topic.topic_id is not None and topic.topic_id == again.topic_id
    assert topic.is_internal is False
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    described = admin.describe_topics(TopicCollection([a]))[a].result(10)
    assert [(p.leader_id, list(p.replica_nodes), list(p.isr_nodes)) for p in topic.partitions] == [
        (p.leader.id, [n.id for n in p.replicas], [n.id for n in p.isr])
        for p in described.partitions
    ]
