"""Transactions against a real broker with confluent-kafka's transactional producer.

Committed records are read once by read_committed consumers, aborted ones never;
a second producer with the same transactional id fences the first; a transaction
left open is aborted after its timeout; offsets sent to a transaction become the
group's only when it commits; a broker killed mid-transaction aborts it after the
restart and keeps every committed one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from kops import admin
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import BrokerProcess, run_broker, wait_until

# The coordinator looks for timed-out transactions every 200 ms instead of 10 s.
FAST_ABORTS = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "200"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_broker(tmp_path_factory.mktemp("txn-broker"), config=FAST_ABORTS) as bootstrap:
        yield bootstrap


def _topic(bootstrap: str, partitions: int = 2) -> str:
    name = f"txn-{uuid.uuid4().hex[:8]}"
    admin.create_topic(bootstrap, name, partitions)
    return name


def _producer(bootstrap: str, transactional_id: str, **extra: object) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, **extra}
    )
    producer.init_transactions(30)
    return producer


def _read(bootstrap: str, topic: str, isolation: str, expect: int) -> list[bytes]:
    """Every data record's value `isolation` lets a consumer see, once `expect` arrived
    (then a little longer, so records beyond `expect` would show)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    idle = 0
    try:
        while idle < 10 or len(values) < expect:
            message = consumer.poll(0.2)
            if message is None:
                idle += 1
                if idle > 150:
                    break
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
            idle = 0
    finally:
        consumer.close()
    return values


def _send(producer: Producer, topic: str, values: list[bytes]) -> None:
    for i, value in enumerate(values):
        producer.produce(topic, value, partition=i % 2)
    assert producer.flush(30) == 0


def test_committed_records_are_read_once_and_aborted_ones_never(broker: str) -> None:
    topic = _topic(broker)
    producer = _producer(broker, f"tx-{topic}")
    committed = [b"c%d" % i for i in range(20)]
    aborted = [b"a%d" % i for i in range(15)]
    producer.begin_transaction()
    _send(producer, topic, committed[:10])
    producer.commit_transaction(30)
    producer.begin_transaction()
    _send(producer, topic, aborted)
    producer.abort_transaction(30)
    producer.begin_transaction()
    _send(producer, topic, committed[10:])
    producer.commit_transaction(30)

    assert sorted(_read(broker, topic, "read_committed", 20)) == sorted(committed)
    # read_uncommitted sees the aborted data too, but never the markers.
    assert sorted(_read(broker, topic, "read_uncommitted", 35)) == sorted(committed + aborted)


def test_an_open_transaction_holds_back_read_committed_readers(broker: str) -> None:
    topic = _topic(broker, partitions=1)
    producer = _producer(broker, f"tx-{topic}")
    plain = Producer({"bootstrap.servers": broker})
    producer.begin_transaction()
    producer.produce(topic, b"open", partition=0)
    assert producer.flush(30) == 0
    plain.produce(topic, b"after", partition=0)
    assert plain.flush(30) == 0
    # The record after the open transaction waits behind it (the last stable offset).
    assert _read(broker, topic, "read_committed", 0) == []
    producer.commit_transaction(30)
    assert _read(broker, topic, "read_committed", 2) == [b"open", b"after"]


def test_a_second_producer_with_the_same_id_fences_the_first(broker: str) -> None:
    topic = _topic(broker)
    transactional_id = f"tx-{topic}"
    zombie = _producer(broker, transactional_id)
    zombie.begin_transaction()
    _send(zombie, topic, [b"zombie"])
    successor = _producer(broker, transactional_id)  # aborts the zombie's transaction
    successor.begin_transaction()
    _send(successor, topic, [b"successor"])
    successor.commit_transaction(30)
    with pytest.raises(KafkaException) as fenced:
        zombie.produce(topic, b"late", partition=0)
        zombie.flush(10)
        zombie.commit_transaction(10)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].txn_requires_abort()
    assert _read(broker, topic, "read_committed", 1) == [b"successor"]


def test_a_transaction_left_open_is_aborted_after_its_timeout(broker: str) -> None:
    topic = _topic(broker, partitions=1)
    stuck = _producer(broker, f"tx-{topic}", **{"transaction.timeout.ms": 1500})
    stuck.begin_transaction()
    stuck.produce(topic, b"stuck", partition=0)
    assert stuck.flush(30) == 0
    plain = Producer({"bootstrap.servers": broker})
    plain.produce(topic, b"later", partition=0)
    assert plain.flush(30) == 0
    # Once the coordinator aborts it, what followed becomes readable, and it never is.
    assert _read(broker, topic, "read_committed", 1) == [b"later"]
    with pytest.raises(KafkaException):
        stuck.commit_transaction(10)


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def test_offsets_sent_to_a_transaction_are_the_groups_only_if_it_commits(broker: str) -> None:
    source, sink = _topic(broker, partitions=1), _topic(broker, partitions=1)
    feed = Producer({"bootstrap.servers": broker})
    for i in range(10):
        feed.produce(source, b"%d" % i, partition=0)
    assert feed.flush(30) == 0
    group = f"etl-{source}"
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    producer = _producer(broker, f"tx-{source}")
    consumer.subscribe([source])
    try:
        got: list[bytes] = []
        wait_until(
            lambda: (
                got.extend(m.value() for m in consumer.consume(10, 0.5) if not m.error())
                or len(got) >= 10
            ),
            30,
            message="the source records",
        )
        for attempt, commit in (("aborted", False), ("committed", True)):
            producer.begin_transaction()
            for value in got:
                producer.produce(sink, value + attempt.encode(), partition=0)
            producer.send_offsets_to_transaction(
                [TopicPartition(source, 0, 10)], consumer.consumer_group_metadata(), 30
            )
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
                assert _committed(broker, group, source) < 0  # nothing committed yet
        assert _committed(broker, group, source) == 10
    finally:
        consumer.close()
    assert sorted(_read(broker, sink, "read_committed", 10)) == sorted(
        v + b"committed" for v in got
    )


@requires_bundled_broker
def test_a_broker_killed_mid_transaction_aborts_it_and_keeps_the_committed(
    tmp_path: Path,
) -> None:
    broker = BrokerProcess(tmp_path / "broker", config=FAST_ABORTS)
    broker.start()
    try:
        topic = _topic(broker.bootstrap)
        producer = _producer(broker.bootstrap, f"tx-{topic}", **{"transaction.timeout.ms": 3000})
        producer.begin_transaction()
        _send(producer, topic, [b"kept-%d" % i for i in range(6)])
        producer.commit_transaction(30)
        producer.begin_transaction()
        _send(producer, topic, [b"lost-%d" % i for i in range(6)])
        broker.kill()  # SIGKILL: the second transaction never ends
        broker.start()
        values = _read(broker.bootstrap, topic, "read_committed", 6)
        assert sorted(values) == sorted(b"kept-%d" % i for i in range(6))
        # The restarted coordinator fenced the old producer: a new one takes over the id.
        successor = _producer(broker.bootstrap, f"tx-{topic}")
        successor.begin_transaction()
        _send(successor, topic, [b"next"])
        successor.commit_transaction(30)
        assert b"next" in _read(broker.bootstrap, topic, "read_committed", 7)
    finally:
        broker.stop()
