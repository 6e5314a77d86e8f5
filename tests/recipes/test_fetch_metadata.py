"""kops.client.fetch_metadata with the cluster away: it serves the client's callbacks
between attempts, and for an assigned consumer that must not hand out a record. A poll()
there dropped the next fetched record while moving the consumer's position past it; the
exactly-once fan-out, whose partition check runs this call every 30 s, then committed past
records it never forwarded (1 or 2 in 66,000 under 20 broker kills)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import BrokerUnavailable, ClientSettings, ErrorWatch, fetch_metadata
from kops.testing import BrokerProcess, wait_until

RECORDS = 500


def _produce(bootstrap: str, topic: str) -> None:
    failed: list[object] = []
    # One batch (linger), so the consumer's first fetch brings every record.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2000})
    for i in range(RECORDS):
        producer.produce(
            topic, value=str(i).encode(), on_delivery=lambda e, m: e and failed.append(e)
        )
    assert producer.flush(30) == 0 and not failed, failed


def test_metadata_with_the_cluster_away_hands_out_no_record(
    broker_process: BrokerProcess,
) -> None:
    bootstrap = broker_process.bootstrap
    topic = f"md-{uuid.uuid4().hex[:8]}"
    admin.create_topic(bootstrap, topic, 1)
    _produce(bootstrap, topic)
    settings = ClientSettings(bootstrap)
    watch = ErrorWatch(bootstrap)
    consumer = Consumer(settings.consumer_config(f"g-{topic}", watch))
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got: list[int] = []

        def first_record() -> bool:
            got.extend(m.offset() for m in consumer.consume(1, 0.2) if m.error() is None)
            return bool(got)

        wait_until(first_record, 30)
        assert got == [0]
        # One fetch brought every record: the rest wait in the consumer's own queue while
        # the broker is away.
        wait_until(
            lambda: (
                consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)[1] == RECORDS
            ),
            10,
        )
        broker_process.kill()
        with pytest.raises(BrokerUnavailable):
            fetch_metadata(consumer, watch, 2.0, topic)
        while batch := consumer.consume(RECORDS, 1.0):  # what the local queue holds
            got.extend(m.offset() for m in batch if m.error() is None)
        skipped = sorted(set(range(RECORDS)) - set(got))
        assert not skipped and got == list(range(RECORDS)), f"records skipped: {skipped}"
        (position,) = consumer.position([TopicPartition(topic, 0)])
        assert position.offset == RECORDS
    finally:
        consumer.close()
        broker_process.start()


@pytest.mark.timeout(15)  # well under the 30 s deadline it is given
def test_an_unassigned_consumer_still_learns_the_cluster_is_away_at_once() -> None:
    """Before it holds partitions, polling it is harmless: its error callback reports the
    unreachable cluster in well under the timeout."""
    watch = ErrorWatch("127.0.0.1:1")
    consumer = Consumer(ClientSettings("127.0.0.1:1").consumer_config("g", watch))
    try:
        with pytest.raises(BrokerUnavailable, match="cannot reach Kafka"):
            fetch_metadata(consumer, watch, 30.0)
        assert watch.all_down  # its error callback ran
    finally:
        consumer.close()
