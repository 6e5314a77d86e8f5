"""Transactions in a three-broker cluster, with confluent-kafka's transactional producer.

Every topic has three replicas and partitions led by every broker, so each
commit or abort writes markers through other brokers' leaders (WriteTxnMarkers).
A transactional id's coordinator is the leader of its `__transaction_state`
partition: when that broker is SIGKILLed mid-transaction, the partition's new
leader takes the id over from the replicated state, a new producer of the id
fences the old one and aborts its transaction, and nothing of it is ever read
committed. When a data partition's leader dies instead, the commit completes
once a new leader takes the marker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from kio.schema.find_coordinator import v2 as find_coordinator_v2
from kio.static.primitive import i8

from kops.broker.groups.storage import partition_for
from kops.broker.txn.log import TRANSACTION_STATE_TOPIC
from kops.client import KopsClientError
from kops.protocol.client import RequestError, send_request
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from kops.transactions import describe_transaction
from tests.cluster.clients import create, leaders_seen_by, partitions_seen_by, ready
from tests.cluster.processes import Cluster

pytestmark = requires_bundled_broker

GROUP, TRANSACTION = 0, 1
PARTITIONS = 6
CONFIG = {
    "replica.lag.time.max.ms": "2000",
    # Fewer internal partitions than Kafka's 50: less to replicate on a small test machine,
    # still several per broker.
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.num.partitions": "10",
    # Timed-out transactions are looked for every 500 ms instead of 10 s.
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "500",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, config=CONFIG)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def _coordinator(cluster: Cluster, node: int, key: str, key_type: int) -> int:
    """The coordinator broker `node` names for the key; -1 while there is none (or it is down)."""
    host, port = cluster.address(node).rsplit(":", 1)
    try:
        response = send_request(
            host,
            int(port),
            find_coordinator_v2.FindCoordinatorRequest(key=key, key_type=i8(key_type)),
            timeout=5,
        )
    except RequestError:
        return -1
    return int(response.node_id) if response.error_code == 0 else -1


def _wait_coordinator(cluster: Cluster, node: int, key: str, key_type: int) -> int:
    found = wait_until(
        lambda: _coordinator(cluster, node, key, key_type) > 0,
        timeout=30,
        message=lambda: f"no coordinator for {key!r}\n{cluster.logs()}",
    )
    assert found
    return _coordinator(cluster, node, key, key_type)


def _topic(cluster: Cluster, node: int, name: str, partitions: int = PARTITIONS) -> dict[int, int]:
    """A topic with three replicas per partition; partition -> leader, every broker leading some."""
    create(cluster, node, name, partitions, 3, {"min.insync.replicas": "2"})
    leaders = leaders_seen_by(cluster, node, name)
    assert leaders is not None and set(leaders.values()) == set(cluster.brokers)
    return leaders


def _bootstrap(cluster: Cluster) -> str:
    return ",".join(cluster.address(n) for n in cluster.live())


def _producer(bootstrap: str, transactional_id: str, **extra: object) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, **extra}
    )
    producer.init_transactions(60)
    return producer


def _send(producer: Producer, topic: str, values: list[str]) -> None:
    for i, value in enumerate(values):
        producer.produce(topic, value.encode(), partition=i % PARTITIONS)
    assert producer.flush(30) == 0


def _read_committed(
    bootstrap: str, topic: str, expect: int, partitions: int = PARTITIONS
) -> list[str]:
    """Every value a read_committed consumer of the whole topic gets, once `expect` arrived
    and then nothing more for two seconds (so that records beyond `expect` would show)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[str] = []
    idle = [0]

    def settled() -> bool:
        message = consumer.poll(0.2)
        if message is None:
            idle[0] += 1
        else:
            assert message.error() is None, message.error()
            values.append(message.value().decode())
            idle[0] = 0
        return len(values) >= expect and idle[0] >= 10

    try:
        wait_until(settled, timeout=60, message=lambda: f"{len(values)} of {expect} read")
    finally:
        consumer.close()
    return values


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=30)
        return int(tp.offset)
    finally:
        consumer.close()


def _state(bootstrap: str, transactional_id: str) -> str | None:
    try:
        return describe_transaction(bootstrap, transactional_id).state
    except KopsClientError:
        return None  # its coordinator is moving


def test_commits_are_read_once_aborts_never_and_offsets_commit_with_them(
    cluster: Cluster,
) -> None:
    node = ready(cluster)
    _topic(cluster, node, "sink")
    create(cluster, node, "source", 1, 3)
    bootstrap = _bootstrap(cluster)
    feed = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        feed.produce("source", b"%d" % i, partition=0)
    assert feed.flush(30) == 0

    transactional_id = "etl-sink"
    txn_coordinator = _wait_coordinator(cluster, node, transactional_id, TRANSACTION)
    # A group coordinated elsewhere: its offsets reach it as a marker from another broker.
    group = next(
        g
        for g in (f"etl-{i}" for i in range(100))
        if _wait_coordinator(cluster, node, g, GROUP) != txn_coordinator
    )
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    producer = _producer(bootstrap, transactional_id)
    consumer.subscribe(["source"])
    try:
        got: list[bytes] = []
        wait_until(
            lambda: (
                got.extend(m.value() for m in consumer.consume(10, 0.5) if not m.error())
                or len(got) >= 10
            ),
            60,
            message="the source records",
        )
        producer.begin_transaction()
        _send(producer, "sink", [f"aborted-{i}" for i in range(12)])
        producer.send_offsets_to_transaction(
            [TopicPartition("source", 0, 10)], consumer.consumer_group_metadata(), 30
        )
        producer.abort_transaction(30)
        assert _committed(bootstrap, group, "source") < 0  # the aborted offsets never count
        producer.begin_transaction()
        _send(producer, "sink", [f"committed-{i}" for i in range(12)])
        producer.send_offsets_to_transaction(
            [TopicPartition("source", 0, 10)], consumer.consumer_group_metadata(), 30
        )
        producer.commit_transaction(30)
        wait_until(lambda: _committed(bootstrap, group, "source") == 10, timeout=30)
        producer.begin_transaction()
        _send(producer, "sink", [f"committed-{i}" for i in range(12, 24)])
        producer.commit_transaction(30)
    finally:
        consumer.close()

    values = _read_committed(bootstrap, "sink", 24)
    assert sorted(values) == sorted(f"committed-{i}" for i in range(24))


def test_a_new_coordinator_takes_over_when_the_old_one_dies_mid_transaction(
    cluster: Cluster,
) -> None:
    node = ready(cluster)
    _topic(cluster, node, "orders")
    transactional_id = "orders-writer"
    producer = _producer(_bootstrap(cluster), transactional_id)
    producer.begin_transaction()
    _send(producer, "orders", [f"kept-{i}" for i in range(12)])
    producer.commit_transaction(30)
    producer.begin_transaction()
    _send(producer, "orders", [f"open-{i}" for i in range(12)])

    victim = _wait_coordinator(cluster, node, transactional_id, TRANSACTION)
    cluster.brokers[victim].kill()  # SIGKILL with the transaction open
    killed = time.monotonic()
    survivor = next(n for n in cluster.brokers if n != victim)
    bootstrap = _bootstrap(cluster)
    # A new producer of the id: the new coordinator fences the old one and aborts its
    # transaction (markers to every partition, the dead broker's ones at their new leaders).
    successor = _producer(bootstrap, transactional_id)
    successor.begin_transaction()
    _send(successor, "orders", [f"next-{i}" for i in range(12)])
    successor.commit_transaction(60)
    print(f"next transaction committed {time.monotonic() - killed:.2f} s after SIGKILL")
    assert _coordinator(cluster, survivor, transactional_id, TRANSACTION) not in (-1, victim)

    with pytest.raises(KafkaException) as fenced:
        producer.commit_transaction(30)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].txn_requires_abort()
    values = _read_committed(bootstrap, "orders", 24)
    assert sorted(values) == sorted(
        [f"kept-{i}" for i in range(12)] + [f"next-{i}" for i in range(12)]
    )
    assert _state(bootstrap, transactional_id) == "CompleteCommit"


def test_a_transaction_its_dead_coordinator_left_open_is_aborted_after_its_timeout(
    cluster: Cluster,
) -> None:
    node = ready(cluster)
    _topic(cluster, node, "events")
    transactional_id = "events-writer"
    producer = _producer(_bootstrap(cluster), transactional_id, **{"transaction.timeout.ms": 4000})
    producer.begin_transaction()
    _send(producer, "events", [f"kept-{i}" for i in range(12)])
    producer.commit_transaction(30)
    producer.begin_transaction()
    _send(producer, "events", [f"open-{i}" for i in range(12)])

    victim = _wait_coordinator(cluster, node, transactional_id, TRANSACTION)
    cluster.brokers[victim].kill()
    killed = time.monotonic()
    bootstrap = _bootstrap(cluster)
    # Nobody asks: the new coordinator aborts it by itself once its timeout passed.
    wait_until(
        lambda: _state(bootstrap, transactional_id) == "CompleteAbort",
        timeout=60,
        message=lambda: f"still {_state(bootstrap, transactional_id)}\n{cluster.logs()}",
    )
    print(f"aborted {time.monotonic() - killed:.2f} s after SIGKILL (timeout 4 s)")
    assert sorted(_read_committed(bootstrap, "events", 12)) == sorted(
        f"kept-{i}" for i in range(12)
    )
    # The abort bumped the epoch: the producer that let it hang is fenced.
    with pytest.raises(KafkaException):
        producer.commit_transaction(30)


@pytest.fixture
def cluster_rf2(tmp_path: Path) -> Iterator[Cluster]:
    # The state topic on two of the three brokers: a transactional id whose state
    # partition leaves out a broker can commit while that broker lies dead. A dead
    # broker is fenced two heartbeats after its connection closed: 2 s here, so the
    # commit's first markers surely find it dead, not yet replaced.
    cluster = Cluster(
        tmp_path,
        config={
            **CONFIG,
            "transaction.state.log.replication.factor": "2",
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "6000",
        },
    )
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def test_a_commit_completes_once_a_dead_leaders_partitions_have_new_leaders(
    cluster_rf2: Cluster,
) -> None:
    cluster = cluster_rf2
    node = ready(cluster)
    leaders = _topic(cluster, node, "payments")
    status = cluster.leader()
    assert status is not None
    _wait_coordinator(cluster, node, "any", TRANSACTION)  # the state topic exists from now on
    states = wait_until(lambda: partitions_seen_by(cluster, node, TRANSACTION_STATE_TOPIC))
    assert states
    # An id whose state leaves out a broker that is not the controller: that broker dies.
    transactional_id, victim = next(
        (tid, left_out)
        for tid in (f"payments-{i}" for i in range(100))
        for left_out in set(cluster.brokers)
        - set(states[partition_for(tid, len(states))].replica_nodes)
        if left_out != status.leader_id
    )
    assert victim in leaders.values()
    producer = _producer(_bootstrap(cluster), transactional_id)
    producer.begin_transaction()
    _send(producer, "payments", [f"a-{i}" for i in range(12)])
    producer.commit_transaction(30)
    producer.begin_transaction()
    _send(producer, "payments", [f"b-{i}" for i in range(12)])

    cluster.brokers[victim].kill()
    killed = time.monotonic()
    # Decided at once (the state's ISR is alive); its markers in the dead broker's
    # partitions wait until those have new leaders.
    producer.commit_transaction(30)
    bootstrap = _bootstrap(cluster)
    wait_until(
        lambda: _state(bootstrap, transactional_id) == "CompleteCommit",
        timeout=60,
        message=lambda: f"still {_state(bootstrap, transactional_id)}\n{cluster.logs()}",
    )
    print(f"commit complete {time.monotonic() - killed:.2f} s after the leader's SIGKILL")
    survivor = cluster.live()[0]
    coordinator = _coordinator(cluster, survivor, transactional_id, TRANSACTION)
    assert f"commit markers of {transactional_id!r} outstanding" in cluster.log_of(coordinator)
    moved = leaders_seen_by(cluster, survivor, "payments") or {}
    assert all(moved[p] not in (-1, victim) for p, old in leaders.items() if old == victim)

    producer.begin_transaction()
    _send(producer, "payments", [f"c-{i}" for i in range(12)])
    producer.commit_transaction(30)
    values = _read_committed(bootstrap, "payments", 36)
    # Exactly once: no record lost to the failover, none written twice by a retry.
    assert sorted(values) == sorted(f"{p}-{i}" for p in "abc" for i in range(12))
