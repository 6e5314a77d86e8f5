"""read_committed reads (KIP-98) through a real broker: transactional batches by raw
Produce, markers through the broker's Partition, reads by raw Fetch / ListOffsets
and by confluent-kafka consumers."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from kio.schema.errors import ErrorCode
from kio.schema.produce.v8 import request as produce_v8
from kio.static.primitive import i16, i32, i32Timedelta

from kops.broker.runner import BrokerThread
from kops.protocol.batch import ATTR_TRANSACTIONAL, build_batch, decode_records, iter_batches
from kops.protocol.client import send_request
from kops.protocol.messages import build
from kops.testing import TEST_CONFIG, wait_until
from tests.broker.clients import create_topic, fetch_request

READ_UNCOMMITTED, READ_COMMITTED = 0, 1
T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerThread, str]]:
    """An in-process broker: the test reaches its partitions to write markers."""
    runner = BrokerThread(tmp_path_factory.mktemp("read-committed") / "data", config=TEST_CONFIG)
    bootstrap = runner.start()
    try:
        yield runner, bootstrap
    finally:
        runner.stop()


@pytest.fixture
def topic(broker: tuple[BrokerThread, str]) -> str:
    name = f"rc-{uuid.uuid4().hex[:8]}"
    create_topic(broker[1], name)
    return name


class TxnProducer:
    """Raw Produce v8 of one producer id's batches (transactional unless told)."""

    def __init__(self, bootstrap: str, topic: str, producer_id: int) -> None:
        self.bootstrap, self.topic, self.producer_id, self.seq = bootstrap, topic, producer_id, 0

    def send(
        self,
        *values: bytes,
        txn: bool = True,
        timestamp: int = T0,
        expect: ErrorCode = ErrorCode.none,
    ) -> int:
        """The batch's base offset; with `expect` an error, asserts the broker refused
        it so (and its sequence numbers stay unused)."""
        batch = build_batch(
            [(None, value, []) for value in values],
            timestamp_ms=timestamp,
            producer_id=self.producer_id,
            producer_epoch=0,
            base_sequence=self.seq,
            attributes=ATTR_TRANSACTIONAL if txn else 0,
        )
        self.seq += len(values)
        host, port = self.bootstrap.rsplit(":", 1)
        request = produce_v8.ProduceRequest(
            transactional_id=f"tx-{self.producer_id}" if txn else None,
            acks=i16(-1),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=5)),
            topic_data=(
                produce_v8.TopicProduceData(
                    name=self.topic,
                    partition_data=(produce_v8.PartitionProduceData(index=i32(0), records=batch),),
                ),
            ),
        )
        response = send_request(host, int(port), request)
        answer = response.responses[0].partition_responses[0]
        assert answer.error_code == expect, answer
        if expect:
            self.seq -= len(values)
        return int(answer.base_offset)


def write_marker(
    broker: tuple[BrokerThread, str], topic: str, producer_id: int, commit: bool
) -> int:
    runner = broker[0]
    partition = runner.broker.partition(topic, 0)
    assert partition is not None
    offset = runner.call(lambda: partition.write_marker(producer_id, 0, commit, 0))
    assert isinstance(offset, int)
    # A lone replica commits at once, and wait_committed says so.
    assert runner.call(lambda: partition.high_watermark) == offset + 1
    node = runner.broker.node_id
    task = runner.call(lambda: asyncio.ensure_future(partition.wait_committed(offset, node, 5)))
    assert isinstance(task, asyncio.Future)
    wait_until(lambda: runner.call(task.done))
    assert task.result() == ErrorCode.none
    return offset


def fetch(
    bootstrap: str,
    topic: str,
    offset: int,
    isolation: int,
    *,
    version: int = 12,
    max_wait_ms: int = 0,
) -> Any:
    request = fetch_request(
        topic, version, offset=offset, isolation=isolation, max_wait_ms=max_wait_ms
    )
    host, port = bootstrap.rsplit(":", 1)
    response = send_request(host, int(port), request, timeout=15)
    [data] = response.responses[0].partitions
    assert data.error_code == ErrorCode.none
    return data


def batches(data: Any) -> list[tuple[int, bool, list[bytes]]]:
    """(base offset, is control, values) of each batch in a fetch answer."""
    raw = bytes(data.records or b"")
    return [
        (h.base_offset, h.is_control, [r.value or b"" for r in decode_records(raw[p : p + h.size])])
        for p, h in iter_batches(raw)
    ]


def aborted(data: Any) -> list[tuple[int, int]]:
    return [(a.producer_id, a.first_offset) for a in data.aborted_transactions or ()]


def list_offset(
    bootstrap: str, topic: str, timestamp: int, isolation: int, version: int = 7
) -> int:
    schema = importlib.import_module(f"kio.schema.list_offsets.v{version}.request")
    wanted = build(
        schema.ListOffsetsPartition, partition_index=0, current_leader_epoch=-1, timestamp=timestamp
    )
    request = build(  # v1 has no isolation level: build() drops it
        schema.ListOffsetsRequest,
        replica_id=-1,
        isolation_level=isolation,
        topics=(schema.ListOffsetsTopic(name=topic, partitions=(wanted,)),),
    )
    host, port = bootstrap.rsplit(":", 1)
    (answer,) = send_request(host, int(port), request, timeout=10).topics
    (part,) = answer.partitions
    assert part.error_code == ErrorCode.none
    return int(part.offset)


def consume(bootstrap: str, topic: str, isolation: str, expected: int) -> list[bytes]:
    """Every data record a confluent-kafka consumer delivers (none of them control)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            "isolation.level": isolation,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while len(values) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                values.append(msg.value())
        settle = time.monotonic() + 1  # nothing more turns up
        while time.monotonic() < settle:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_read_committed_withholds_open_and_lists_aborted(
    broker: tuple[BrokerThread, str], topic: str
) -> None:
    bootstrap = broker[1]
    plain = TxnProducer(bootstrap, topic, 900)
    a = TxnProducer(bootstrap, topic, 1001)
    b = TxnProducer(bootstrap, topic, 1002)
    assert plain.send(b"p0", txn=False) == 0
    assert a.send(b"a1", b"a2") == 1  # 1-2
    assert b.send(b"b1") == 3
    assert plain.send(b"p1", txn=False) == 4

    # Both transactions open: read_committed stops before the first (at 1).
    for version in (4, 12):
        data = fetch(bootstrap, topic, 0, READ_COMMITTED, version=version)
        assert (data.high_watermark, data.last_stable_offset) == (5, 1)
        assert batches(data) == [(0, False, [b"p0"])]
        assert aborted(data) == []
        assert data.aborted_transactions == ()
    data = fetch(bootstrap, topic, 0, READ_UNCOMMITTED)
    assert data.last_stable_offset == 1  # the real LSO at every isolation level
    assert [v for _, _, vs in batches(data) for v in vs] == [b"p0", b"a1", b"a2", b"b1", b"p1"]
    assert fetch(bootstrap, topic, 1, READ_COMMITTED).records in (b"", None)
    assert list_offset(bootstrap, topic, -1, READ_COMMITTED) == 1
    assert list_offset(bootstrap, topic, -1, READ_UNCOMMITTED) == 5

    assert write_marker(broker, topic, 1001, commit=True) == 5
    data = fetch(bootstrap, topic, 0, READ_COMMITTED)
    assert data.last_stable_offset == 3  # b still open
    assert [o for o, _, _ in batches(data)] == [0, 1]
    assert write_marker(broker, topic, 1002, commit=False) == 6

    for version in (4, 12):
        data = fetch(bootstrap, topic, 0, READ_COMMITTED, version=version)
        assert (data.high_watermark, data.last_stable_offset) == (7, 7)
        assert batches(data) == [
            (0, False, [b"p0"]),
            (1, False, [b"a1", b"a2"]),
            (3, False, [b"b1"]),
            (4, False, [b"p1"]),
            (5, True, [b"\x00" * 6]),  # control value: version 0, coordinator epoch 0
            (6, True, [b"\x00" * 6]),
        ]
        assert aborted(data) == [(1002, 3)]
    assert aborted(fetch(bootstrap, topic, 4, READ_COMMITTED)) == [(1002, 3)]
    assert aborted(fetch(bootstrap, topic, 6, READ_COMMITTED)) == [(1002, 3)]
    assert aborted(fetch(bootstrap, topic, 0, READ_UNCOMMITTED)) == []
    assert list_offset(bootstrap, topic, -1, READ_COMMITTED) == 7

    assert consume(bootstrap, topic, "read_committed", 4) == [b"p0", b"a1", b"a2", b"p1"]
    assert consume(bootstrap, topic, "read_uncommitted", 5) == [
        b"p0",
        b"a1",
        b"a2",
        b"b1",
        b"p1",
    ]


def test_a_parked_read_committed_fetch_wakes_on_the_marker(
    broker: tuple[BrokerThread, str], topic: str
) -> None:
    bootstrap = broker[1]
    producer = TxnProducer(bootstrap, topic, 2001)
    producer.send(b"x1")
    answers: list[Any] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            fetch(bootstrap, topic, 0, READ_COMMITTED, max_wait_ms=10_000)
        )
    )
    runner = broker[0]
    started = time.monotonic()
    waiter.start()
    wait_until(
        lambda: runner.call(lambda: runner.broker.fetches.watched((topic, 0))) == 1,
        10,
        message="the read_committed fetch parked",
    )
    assert not answers  # parked: nothing is committed yet
    write_marker(broker, topic, 2001, commit=True)
    waiter.join(10)
    assert time.monotonic() - started < 5
    (data,) = answers
    assert data.last_stable_offset == 2
    assert [(o, c) for o, c, _ in batches(data)] == [(0, False), (1, True)]
    assert consume(bootstrap, topic, "read_committed", 1) == [b"x1"]


def test_list_offsets_by_time_stays_below_the_lso(
    broker: tuple[BrokerThread, str], topic: str
) -> None:
    bootstrap = broker[1]
    plain = TxnProducer(bootstrap, topic, 3000)
    txn = TxnProducer(bootstrap, topic, 3001)
    plain.send(b"early", txn=False, timestamp=T0)  # 0
    txn.send(b"open", timestamp=T0 + 5_000)  # 1: the largest timestamp, undecided
    plain.send(b"late", txn=False, timestamp=T0 + 1_000)  # 2
    for version in (2, 7):
        assert list_offset(bootstrap, topic, T0 + 2_000, READ_UNCOMMITTED, version) == 1
        assert list_offset(bootstrap, topic, T0 + 2_000, READ_COMMITTED, version) == -1
        assert list_offset(bootstrap, topic, T0, READ_COMMITTED, version) == 0
    assert list_offset(bootstrap, topic, -3, READ_UNCOMMITTED) == 1  # max timestamp
    assert list_offset(bootstrap, topic, -3, READ_COMMITTED) == -1
    # v1 has no isolation level: uncommitted.
    assert list_offset(bootstrap, topic, -1, READ_UNCOMMITTED, version=1) == 3
    write_marker(broker, topic, 3001, commit=False)
    assert list_offset(bootstrap, topic, -1, READ_COMMITTED) == 4
    assert list_offset(bootstrap, topic, T0 + 2_000, READ_COMMITTED) == 1


def test_a_plain_batch_inside_the_producers_open_transaction_is_refused(
    broker: tuple[BrokerThread, str], topic: str
) -> None:
    """Kafka's ProducerAppendInfo: "Expected transactional write from producer"."""
    bootstrap = broker[1]
    producer = TxnProducer(bootstrap, topic, 4001)
    other = TxnProducer(bootstrap, topic, 4002)
    assert producer.send(b"before", txn=False) == 0  # idempotent, no transaction yet
    assert producer.send(b"t1") == 1  # the transaction begins here
    assert other.send(b"other", txn=False) == 2  # not this producer's transaction
    assert producer.send(b"plain", txn=False, expect=ErrorCode.invalid_txn_state) == -1
    assert producer.send(b"t2") == 3  # the transaction carries on, sequence unbroken
    write_marker(broker, topic, 4001, commit=True)  # 4
    assert producer.send(b"after", txn=False) == 5
    data = fetch(bootstrap, topic, 0, READ_UNCOMMITTED)
    values = [v for _, control, vs in batches(data) if not control for v in vs]
    assert values == [b"before", b"t1", b"other", b"t2", b"after"]
