"""kops.client.close_consumer: the revocation runs in poll(), before close(), so close() of a
consumer with rebalance callbacks has nothing to revoke (where confluent-kafka could freeze
the process holding the GIL), and the group is left at once."""

from __future__ import annotations

import threading
import uuid

from confluent_kafka import Consumer, TopicPartition

from kops import admin
from kops.client import close_consumer
from kops.testing import wait_until


def test_close_consumer_revokes_in_poll_then_closes(kafka_broker: str) -> None:
    topic, group = f"cc-{uuid.uuid4().hex[:8]}", f"cc-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 2)
    revoked_on: list[str] = []
    consumer = Consumer(
        {"bootstrap.servers": kafka_broker, "group.id": group, "session.timeout.ms": 6000}
    )

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        revoked_on.append(threading.current_thread().name)

    consumer.subscribe([topic], on_revoke=on_revoke)
    wait_until(lambda: consumer.poll(0.2) is None and len(consumer.assignment()) == 2, 30)
    close_consumer(consumer)
    # Revoked once, by the caller's own poll (close() found nothing assigned).
    assert revoked_on == [threading.current_thread().name]
    # It left the group: a newcomer gets every partition without waiting for a timeout.
    newcomer = Consumer({"bootstrap.servers": kafka_broker, "group.id": group})
    newcomer.subscribe([topic])
    try:
        wait_until(lambda: newcomer.poll(0.2) is None and len(newcomer.assignment()) == 2, 15)
    finally:
        close_consumer(newcomer)


def test_an_assigned_consumer_is_simply_closed(kafka_broker: str) -> None:
    topic = f"cc-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 1)
    consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": "cc-assign"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    close_consumer(consumer, timeout=30, subscribed=False)
    try:
        consumer.assignment()
        raise AssertionError("the consumer is still open")
    except RuntimeError:
        pass  # closed
