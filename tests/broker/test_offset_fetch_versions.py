"""OffsetFetch v1-v9 through a real broker: every version reads committed offsets;
require_stable (v7+, KIP-447) answers UNSTABLE_OFFSET_COMMIT for a partition whose
offset an open transaction holds, until it commits or aborts; v8's groups are
answered each on its own; and a confluent-kafka read_committed consumer waits for
such a transaction instead of starting from the offset it replaces."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kio.schema.errors import ErrorCode

from kops.broker.runner import BrokerThread
from kops.protocol.messages import build
from kops.testing import TEST_CONFIG, wait_until
from tests.broker.clients import create_topic
from tests.broker.groups.group_helpers import send_once

UNSTABLE = ErrorCode.unstable_offset_commit
NONE = ErrorCode.none

# {(topic, partition): (committed offset, error)}
Offsets = dict[tuple[str, int], tuple[int, ErrorCode]]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerThread, str]]:
    """In-process: the consumer test counts the OffsetFetch requests the broker received."""
    runner = BrokerThread(tmp_path_factory.mktemp("offset-fetch") / "data", config=TEST_CONFIG)
    bootstrap = runner.start()
    try:
        yield runner, bootstrap
    finally:
        runner.stop()


@pytest.fixture
def topic(broker: tuple[BrokerThread, str]) -> str:
    name = f"of-{uuid.uuid4().hex[:8]}"
    create_topic(broker[1], name, partitions=2)
    return name


def offset_fetch(
    bootstrap: str,
    version: int,
    groups: dict[str, dict[str, list[int]] | None],
    *,
    require_stable: bool = False,
) -> dict[str, tuple[ErrorCode, Offsets]]:
    """One OffsetFetch of `version` for {group: {topic: partitions} or None (all)};
    answers {group: (group error, offsets)} whatever the version's layout."""
    schema = importlib.import_module(f"kio.schema.offset_fetch.v{version}.request")

    def topics(wanted: dict[str, list[int]] | None, cls: type) -> Any:
        if wanted is None:
            return None
        return tuple(cls(name=t, partition_indexes=tuple(p)) for t, p in wanted.items())

    if version >= 8:
        request = schema.OffsetFetchRequest(
            groups=tuple(
                schema.OffsetFetchRequestGroup(
                    group_id=g, topics=topics(w, schema.OffsetFetchRequestTopics)
                )
                for g, w in groups.items()
            ),
            require_stable=require_stable,
        )
        response = send_once(bootstrap, request)
        assert [g.group_id for g in response.groups] == list(groups)
        return {g.group_id: (g.error_code, _offsets(g.topics)) for g in response.groups}
    ((group, wanted),) = groups.items()
    request = build(  # build() drops require_stable below v7
        schema.OffsetFetchRequest,
        group_id=group,
        topics=topics(wanted, schema.OffsetFetchRequestTopic),
        require_stable=require_stable,
    )
    response = send_once(bootstrap, request)
    error = response.error_code if version >= 2 else NONE
    return {group: (error, _offsets(response.topics))}


def _offsets(topics: Any) -> Offsets:
    return {
        (t.name, p.partition_index): (p.committed_offset, p.error_code)
        for t in topics
        for p in t.partitions
    }


def commit(bootstrap: str, group: str, offsets: list[TopicPartition]) -> None:
    """A plain OffsetCommit by a consumer outside the group (generation -1)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        for tp in consumer.commit(offsets=offsets, asynchronous=False) or ():
            assert tp.error is None, tp.error
    finally:
        consumer.close()


def group_metadata(bootstrap: str, group: str) -> Any:
    """send_offsets_to_transaction's group metadata, from a consumer that never joins
    (generation -1: the broker checks no membership, as for a simple consumer)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.consumer_group_metadata()
    finally:
        consumer.close()


def open_transaction(bootstrap: str, group: str, offsets: list[TopicPartition]) -> Producer:
    """A transactional producer with `offsets` sent to its open transaction (pending)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.send_offsets_to_transaction(offsets, group_metadata(bootstrap, group), 30)
    return producer


@pytest.mark.parametrize("version", range(1, 10))
def test_every_version_reads_committed_offsets(
    broker: tuple[BrokerThread, str], topic: str, version: int
) -> None:
    bootstrap = broker[1]
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(bootstrap, group, [TopicPartition(topic, 0, 5)])
    named = offset_fetch(bootstrap, version, {group: {topic: [0, 1]}})
    assert named == {group: (NONE, {(topic, 0): (5, NONE), (topic, 1): (-1, NONE)})}
    unknown = f"never-{group}"
    assert offset_fetch(bootstrap, version, {unknown: {topic: [0]}}) == {
        unknown: (NONE, {(topic, 0): (-1, NONE)})
    }
    if version >= 2:  # topics null: every committed partition, and only those
        assert offset_fetch(bootstrap, version, {group: None}) == {
            group: (NONE, {(topic, 0): (5, NONE)})
        }


def test_require_stable_withholds_offsets_an_open_transaction_holds(
    broker: tuple[BrokerThread, str], topic: str
) -> None:
    bootstrap = broker[1]
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(bootstrap, group, [TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)])
    wanted = {group: {topic: [0, 1]}}

    def stable(version: int = 7) -> Offsets:
        error, offsets = offset_fetch(bootstrap, version, wanted, require_stable=True)[group]
        assert error == NONE
        return offsets

    producer = open_transaction(bootstrap, group, [TopicPartition(topic, 0, 7)])
    # Only partition 0 is unstable; partition 1 answers its committed offset.
    for version in (7, 8, 9):
        assert stable(version) == {(topic, 0): (-1, UNSTABLE), (topic, 1): (4, NONE)}
        assert offset_fetch(bootstrap, version, {group: None}, require_stable=True) == {
            group: (NONE, {(topic, 0): (-1, UNSTABLE), (topic, 1): (4, NONE)})
        }
    # Without require_stable (and before v7) the last committed offset, as before.
    for version in (5, 6, 7, 8, 9):
        assert offset_fetch(bootstrap, version, wanted) == {
            group: (NONE, {(topic, 0): (3, NONE), (topic, 1): (4, NONE)})
        }

    producer.commit_transaction(30)
    committed = {(topic, 0): (7, NONE), (topic, 1): (4, NONE)}
    wait_until(lambda: stable() == committed, message="the committed transaction's offset")
    assert offset_fetch(bootstrap, 5, wanted)[group] == (NONE, committed)

    producer.begin_transaction()
    producer.send_offsets_to_transaction(
        [TopicPartition(topic, 0, 9), TopicPartition(topic, 1, 9)],
        group_metadata(bootstrap, group),
        30,
    )
    assert stable(8) == {(topic, 0): (-1, UNSTABLE), (topic, 1): (-1, UNSTABLE)}
    producer.abort_transaction(30)
    # The aborted transaction's offsets are dropped: the committed ones stand.
    wait_until(lambda: stable() == committed, message="the aborted transaction's end")


def test_v8_answers_each_group_on_its_own(broker: tuple[BrokerThread, str], topic: str) -> None:
    bootstrap = broker[1]
    busy, plain, unknown = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("busy", "plain", "none"))
    commit(bootstrap, busy, [TopicPartition(topic, 0, 1)])
    commit(bootstrap, plain, [TopicPartition(topic, 0, 11), TopicPartition(topic, 1, 12)])
    producer = open_transaction(bootstrap, busy, [TopicPartition(topic, 0, 2)])
    try:
        for version in (8, 9):
            answers = offset_fetch(
                bootstrap,
                version,
                {busy: {topic: [0]}, plain: None, unknown: {topic: [1]}},
                require_stable=True,
            )
            assert answers == {
                busy: (NONE, {(topic, 0): (-1, UNSTABLE)}),
                plain: (NONE, {(topic, 0): (11, NONE), (topic, 1): (12, NONE)}),
                unknown: (NONE, {(topic, 1): (-1, NONE)}),
            }
    finally:
        producer.abort_transaction(30)


def offset_fetches(runner: BrokerThread) -> float:
    """How many OffsetFetch requests the broker has received."""
    value = runner.broker.metrics.registry.get_sample_value(
        "kafka_network_requestmetrics_requests_total", {"request": "OffsetFetch"}
    )
    return value or 0.0


def test_a_read_committed_consumer_waits_for_the_transaction_holding_its_offset(
    broker: tuple[BrokerThread, str],
) -> None:
    runner, bootstrap = broker
    source = f"src-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, source, partitions=1)
    feed = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        feed.produce(source, b"%d" % i, partition=0)
    assert feed.flush(30) == 0
    group = f"etl-{source}"
    tp = TopicPartition(source, 0)
    commit(bootstrap, group, [TopicPartition(source, 0, 3)])
    producer = open_transaction(bootstrap, group, [TopicPartition(source, 0, 7)])

    def consumer(isolation: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "isolation.level": isolation,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }
        )

    uncommitted = consumer("read_uncommitted")
    try:
        assert uncommitted.committed([tp], timeout=10)[0].offset == 3
    finally:
        uncommitted.close()

    reader = consumer("read_committed")
    try:
        # committed() retries UNSTABLE_OFFSET_COMMIT until its timeout.
        with pytest.raises(KafkaException) as waited:
            reader.committed([tp], timeout=1.5)
        assert waited.value.args[0].code() == KafkaError._TIMED_OUT

        # A member assigned the partition keeps asking rather than start at offset 3.
        before = offset_fetches(runner)
        reader.subscribe([source])
        early: list[Any] = []
        wait_until(
            lambda: (
                early.extend(m for m in [reader.poll(0.1)] if m is not None)
                or (reader.assignment() and offset_fetches(runner) >= before + 3)
            ),
            30,
            message="the consumer's repeated OffsetFetch",
        )
        assert early == []
        producer.commit_transaction(30)
        first = wait_until(lambda: reader.poll(0.2), 30, message="the first record")
        assert first.error() is None, first.error()
        assert (first.offset(), first.value()) == (7, b"7")
    finally:
        reader.close()
