"""The transaction coordinator serves only the `__transaction_state` partitions it owns.

In a cluster a broker coordinates the transactional ids whose state partition it
leads: `elect` loads a partition's ids and resumes what they were doing,
`resign` forgets them, and a request for an id of a partition not owned gets
NOT_COORDINATOR. Driven here on one in-process broker, resigning and electing
its own partitions as a leadership change would.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kio.schema.describe_transactions.v0.request import DescribeTransactionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.list_transactions.v1.request import ListTransactionsRequest
from kio.static.primitive import i16, i64

from kops.broker.runner import BrokerThread
from kops.broker.txn.coordinator import TransactionCoordinator
from kops.broker.txn.state import TxnState
from kops.testing import TEST_CONFIG, wait_until
from tests.broker.clients import create_topic
from tests.broker.groups.group_helpers import RawClient


class Broker:
    def __init__(self, runner: BrokerThread, bootstrap: str) -> None:
        self.runner = runner
        self.bootstrap = bootstrap

    @property
    def coordinator(self) -> TransactionCoordinator:
        coordinator = self.runner.broker.transactions
        assert coordinator is not None
        return coordinator

    def call(self, fn: Any) -> Any:
        return self.runner.call(fn)

    def partition_of(self, transactional_id: str) -> int:
        return self.call(lambda: self.coordinator.store.partition_for(transactional_id))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    runner = BrokerThread(tmp_path, config=TEST_CONFIG)
    bootstrap = runner.start()
    try:
        yield Broker(runner, bootstrap)
    finally:
        runner.stop()


def _producer(bootstrap: str, transactional_id: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    producer.init_transactions(30)
    return producer


def _init(client: RawClient, transactional_id: str, producer: tuple[int, int] = (-1, -1)) -> Any:
    return client.send(
        InitProducerIdRequest(
            transactional_id=transactional_id,
            transaction_timeout=datetime.timedelta(seconds=60),
            producer_id=i64(producer[0]),
            producer_epoch=i16(producer[1]),
        )
    )


def _describe(client: RawClient, transactional_id: str) -> Any:
    (state,) = client.send(
        DescribeTransactionsRequest(transactional_ids=(transactional_id,))
    ).transaction_states
    return state


def _listed(client: RawClient) -> set[str]:
    response = client.send(
        ListTransactionsRequest(state_filters=(), producer_id_filters=(), duration_filter=i64(-1))
    )
    return {t.transactional_id for t in response.transaction_states}


def test_an_id_of_a_resigned_partition_is_not_served_until_elected_again(broker: Broker) -> None:
    _producer(broker.bootstrap, "owned")
    index = broker.partition_of("owned")
    client = RawClient(broker.bootstrap)
    try:
        before = _describe(client, "owned")
        assert before.error_code == ErrorCode.none and before.producer_epoch == 0
        assert broker.call(lambda: broker.coordinator.resign(index)) == 1

        assert _init(client, "owned").error_code == ErrorCode.not_coordinator
        assert _describe(client, "owned").error_code == ErrorCode.not_coordinator
        assert "owned" not in _listed(client)

        assert broker.call(lambda: broker.coordinator.elect(index)) == 1
        # Loaded back from the partition: the same producer, and the next init fences it.
        again = _init(client, "owned", (int(before.producer_id), 0))
        assert again.error_code == ErrorCode.none
        assert (again.producer_id, again.producer_epoch) == (before.producer_id, 1)
        assert "owned" in _listed(client)
    finally:
        client.sock.close()


def test_a_transaction_found_preparing_gets_its_markers_when_elected(broker: Broker) -> None:
    create_topic(broker.bootstrap, "prepared", 1)
    producer = _producer(broker.bootstrap, "prepared-writer")
    producer.begin_transaction()
    producer.produce("prepared", b"decided", partition=0)
    assert producer.flush(30) == 0
    index = broker.partition_of("prepared-writer")

    def decided_then_lost() -> None:
        # PrepareCommit in the state partition, then the coordinator gone before any
        # marker: what a new leader of the partition finds after a crash.
        coordinator = broker.coordinator
        meta = coordinator.txns["prepared-writer"]
        assert meta.state is TxnState.ONGOING
        coordinator.store.write(replace(meta, state=TxnState.PREPARE_COMMIT))
        coordinator.resign(index)

    broker.call(decided_then_lost)
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition("prepared", 0, 0)])
    try:
        assert consumer.poll(1.0) is None  # still undecided in the data partition
        broker.call(lambda: broker.coordinator.elect(index))
        message = wait_until(lambda: consumer.poll(0.5), timeout=30, message="the marker")
        assert message.error() is None and message.value() == b"decided"
    finally:
        consumer.close()
    # Recorded complete once the marker is in: the next transaction of the id may begin.
    wait_until(
        lambda: (
            broker.call(lambda: broker.coordinator.txns["prepared-writer"].state)
            is TxnState.COMPLETE_COMMIT
        ),
        timeout=30,
    )
