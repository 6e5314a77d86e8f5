"""ListOffsets by timestamp through confluent-kafka: the exact record, even mid-batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops.protocol.batch import iter_batches
from kops.testing import run_broker
from tests.broker.clients import create_topic

RECORDS = 15
PER_BATCH = 5
STEP_MS = 1_000


def produce_timed(bootstrap: str, topic: str, t0: int, compression: str) -> None:
    """RECORDS records with explicit timestamps t0, t0 + STEP_MS, ..., PER_BATCH to a batch."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 200,  # everything is queued long before a batch goes out
            "batch.num.messages": PER_BATCH,
            "compression.type": compression,
        }
    )
    errors: list[object] = []
    for i in range(RECORDS):
        producer.produce(
            topic,
            key=b"k%02d" % i,
            value=b"v%02d" % i,
            timestamp=t0 + i * STEP_MS,
            on_delivery=lambda err, _msg: err and errors.append(err),
        )
    assert producer.flush(30) == 0
    assert not errors, errors


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_offsets_for_times_returns_the_record_inside_a_batch(
    tmp_path: Path, compression: str
) -> None:
    topic = f"times-{compression}"
    t0 = int(time.time() * 1000) - 3_600_000
    with run_broker(tmp_path) as bootstrap:
        create_topic(bootstrap, topic)
        produce_timed(bootstrap, topic, t0, compression)

        # The records really share batches on disk.
        segment = (tmp_path / f"{topic}-0" / f"{0:020d}.log").read_bytes()
        counts = [h.records_count for _, h in iter_batches(segment)]
        assert sum(counts) == RECORDS and max(counts) > 1, counts

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "times"})
        try:

            def offset_for(ts: int) -> int:
                (tp,) = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
                assert tp.error is None, tp.error
                return tp.offset

            for i in range(RECORDS):
                assert offset_for(t0 + i * STEP_MS) == i  # a record's own timestamp finds it
                assert offset_for(t0 + i * STEP_MS - STEP_MS // 2) == i  # between two records
            assert offset_for(0) == 0
            assert offset_for(t0 + RECORDS * STEP_MS) == -1  # past the end: no offset

            # Consuming from the answer starts at exactly that record.
            target = t0 + 7 * STEP_MS - 1
            consumer.assign([TopicPartition(topic, 0, offset_for(target))])
            msg = None
            deadline = time.monotonic() + 10
            while msg is None and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
            assert msg is not None and msg.error() is None
            assert (msg.offset(), msg.value(), msg.timestamp()[1]) == (7, b"v07", t0 + 7 * STEP_MS)
        finally:
            consumer.close()
