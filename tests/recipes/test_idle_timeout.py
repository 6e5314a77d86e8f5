"""An idle timeout counts only once the group has assigned partitions.

Kafka holds a new group's first join for ``group.initial.rebalance.delay.ms`` (3 s by
default); the test brokers turn that off for speed, which once hid that a 1.5 s idle timeout
ended a batch run before its first record (found running the recipes on tansu, whose first
join takes about 23 s). Every group-consuming loop shares :class:`kops.client.IdleClock`;
each is run here with a 1 s idle timeout against a broker that keeps Kafka's 3 s delay.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, Message, Producer

from kops import admin
from kops.client import IdleClock
from kops.consume import StartAt, consume
from kops.pytest_plugin import requires_bundled_broker
from kops.recipes.parallel import ParallelConsumer
from kops.recipes.retry import run_retrying_consumer
from kops.testing import run_broker

RECORDS = 40
IDLE = 1.0
DELAY_MS = 3000


@pytest.fixture(scope="module")
def delayed_join_broker() -> Iterator[str]:
    with run_broker(config={"group.initial.rebalance.delay.ms": str(DELAY_MS)}) as bootstrap:
        yield bootstrap


def _topic(bootstrap: str) -> str:
    topic = f"idle-{uuid.uuid4().hex[:8]}"
    admin.create_topic(bootstrap, topic, 2)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(RECORDS):
        producer.produce(topic, str(i).encode())
    assert producer.flush(10) == 0
    return topic


def _with_consume(bootstrap: str, topic: str) -> set[bytes]:
    records = consume(
        bootstrap, topic, group=f"g-{topic}", start=StartAt.committed("earliest"),
        idle_timeout=IDLE,
    )  # fmt: skip
    return {r.value for r in records if r.value is not None}


def _with_parallel(bootstrap: str, topic: str) -> set[bytes]:
    seen: set[bytes] = set()
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    pc = ParallelConsumer(consumer, lambda m: seen.add(m.value() or b""), workers=2)
    pc.subscribe([topic])
    try:
        pc.run(idle_timeout=IDLE)
    finally:
        consumer.close()
    return seen


def _with_retry(bootstrap: str, topic: str) -> set[bytes]:
    seen: set[bytes] = set()

    def handle(msg: Message) -> None:
        seen.add(msg.value() or b"")

    run_retrying_consumer(
        bootstrap, [topic], handle, group=f"g-{topic}", idle_timeout=IDLE,
        consumer_config={"auto.offset.reset": "earliest"},
    )  # fmt: skip
    return seen


@requires_bundled_broker
@pytest.mark.parametrize("loop", [_with_consume, _with_parallel, _with_retry])
def test_short_idle_timeout_outlasts_the_initial_rebalance_delay(
    delayed_join_broker: str, loop: Callable[[str, str], set[bytes]]
) -> None:
    topic = _topic(delayed_join_broker)
    started = time.monotonic()
    seen = loop(delayed_join_broker, topic)
    assert seen == {str(i).encode() for i in range(RECORDS)}
    # It waited for the join (longer than the idle timeout) and then ended on its own.
    assert time.monotonic() - started >= DELAY_MS / 1000


def test_unassigned_consumer_still_ends_after_the_join_allowance(kafka_broker: str) -> None:
    topic = _topic(kafka_broker)
    # Subscribed to nothing that exists: the group never assigns it a partition.
    consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": f"g-{topic}"})
    consumer.subscribe([f"absent-{topic}"])
    clock = IdleClock(0.2, join_allowance=1.5)
    try:
        started = time.monotonic()
        while not clock.expired(consumer):
            consumer.poll(0.1)
        waited = time.monotonic() - started
    finally:
        consumer.close()
    assert 1.5 <= waited < 10
