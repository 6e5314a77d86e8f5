"""ListOffsets -3 (KIP-734 max timestamp): librdkafka's OffsetSpec.max_timestamp() and raw requests.

The expected answer is computed from what a consumer reads back: the first
record, in offset order, with the largest timestamp (Kafka 3.8+, KAFKA-16310).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from kio.schema.errors import ErrorCode
from kio.schema.list_offsets import v6, v7, v8, v9, v11

from kops.protocol.client import send_request
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import run_broker
from tests.broker.clients import create_topic

T0 = int(time.time() * 1000) - 3_600_000
MODULES = {6: v6, 7: v7, 8: v8, 9: v9, 11: v11}


def produce_batches(
    bootstrap: str, topic: str, batches: list[list[int]], compression: str = "none"
) -> None:
    """One batch per inner list (a flush after each), records stamped T0 + each value in seconds."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 1000,  # a batch goes out at the flush, whole
            "compression.type": compression,
        }
    )
    errors: list[object] = []
    for stamps in batches:
        for second in stamps:
            producer.produce(
                topic,
                value=b"v%d" % second,
                partition=0,
                timestamp=T0 + second * 1000,
                on_delivery=lambda err, _msg: err and errors.append(err),
            )
        assert producer.flush(30) == 0
    assert not errors, errors


def read_back(bootstrap: str, topic: str, partition: int = 0) -> list[tuple[int, int]]:
    """(offset, timestamp) of every record still in the partition, as a consumer sees them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "max-ts-oracle"})
    try:
        tp = TopicPartition(topic, partition)
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        consumer.assign([TopicPartition(topic, partition, low)])
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 20
        while (not seen or seen[-1][0] < high - 1) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            seen.append((msg.offset(), msg.timestamp()[1]))
        assert len(seen) == high - low
        return seen
    finally:
        consumer.close()


def expected_max(records: list[tuple[int, int]]) -> tuple[int, int]:
    best = max(ts for _, ts in records)
    return next(offset for offset, ts in records if ts == best), best


def admin_max(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.list_offsets({TopicPartition(topic, partition): OffsetSpec.max_timestamp()})
    info = next(iter(futures.values())).result(10)
    return info.offset, info.timestamp


def raw(bootstrap: str, topic: str, partition: int, timestamp: int, version: int = 7) -> object:
    mod = MODULES[version]
    host, _, port = bootstrap.rpartition(":")
    # v10+ carries a timeout for tiered-storage lookups.
    extra = {"timeout": datetime.timedelta(seconds=10)} if version >= 10 else {}
    request = mod.ListOffsetsRequest(
        **extra,
        replica_id=-1,
        isolation_level=0,
        topics=(
            mod.request.ListOffsetsTopic(
                name=topic,
                partitions=(
                    mod.request.ListOffsetsPartition(
                        partition_index=partition, current_leader_epoch=-1, timestamp=timestamp
                    ),
                ),
            ),
        ),
    )
    (answer,) = send_request(host, int(port), request, timeout=10).topics
    (part,) = answer.partitions
    return part


def raw_max(bootstrap: str, topic: str, version: int = 7) -> tuple[int, int]:
    part = raw(bootstrap, topic, 0, -3, version)
    assert part.error_code == ErrorCode.none  # type: ignore[attr-defined]
    return part.offset, part.timestamp  # type: ignore[attr-defined]


def segments(data_dir: Path, topic: str) -> list[str]:
    return sorted(p.name for p in (data_dir / f"{topic}-0").glob("*.log"))


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_max_timestamp_out_of_order_across_batches_and_segments(
    tmp_path: Path, compression: str
) -> None:
    topic = f"maxts-{compression}"
    with run_broker(tmp_path) as bootstrap:
        # Tiny segments: nearly every batch rolls a new one.
        create_topic(bootstrap, topic, config={"segment.bytes": "250"})
        # offsets 0-2 | 3 | 4-7: the max (9 s) at 5, tied at 7 | 8 | 9: tied again | 10-11
        produce_batches(
            bootstrap,
            topic,
            [[5, 1, 3], [2], [4, 9, 2, 9], [7], [9], [6, 8]],
            compression,
        )
        assert len(segments(tmp_path, topic)) > 2
        records = read_back(bootstrap, topic)
        assert expected_max(records) == (5, T0 + 9_000)  # the earliest of the ties
        assert admin_max(bootstrap, topic) == (5, T0 + 9_000)
        for version in (7, 8, 9, 11):
            assert raw_max(bootstrap, topic, version) == (5, T0 + 9_000)

        # A newer maximum in the middle of a later batch.
        produce_batches(bootstrap, topic, [[8, 12, 11, 12]], compression)
        assert expected_max(read_back(bootstrap, topic)) == (13, T0 + 12_000)
        assert admin_max(bootstrap, topic) == (13, T0 + 12_000)

    # After a restart the segments' maxima come back from their time indexes.
    with run_broker(tmp_path) as bootstrap:
        assert admin_max(bootstrap, topic) == (13, T0 + 12_000)


def test_max_timestamp_empty_partition_and_special_timestamps(
    kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name, partitions=2)
    produce_batches(kafka_broker, topic_name, [[3, 7, 5]])
    assert admin_max(kafka_broker, topic_name) == (1, T0 + 7_000)
    assert admin_max(kafka_broker, topic_name, partition=1) == (-1, -1)

    empty = raw(kafka_broker, topic_name, 1, -3)
    assert (empty.error_code, empty.offset, empty.timestamp) == (ErrorCode.none, -1, -1)  # type: ignore[attr-defined]
    # -4 (earliest local, v8+) without tiered storage is the log start.
    earliest_local = raw(kafka_broker, topic_name, 0, -4, version=8)
    assert (earliest_local.error_code, earliest_local.offset) == (ErrorCode.none, 0)  # type: ignore[attr-defined]
    # -5 (latest tiered, v9+) without tiered storage: no offset.
    latest_tiered = raw(kafka_broker, topic_name, 0, -5, version=9)
    assert (latest_tiered.error_code, latest_tiered.offset) == (ErrorCode.none, -1)  # type: ignore[attr-defined]
    # A special timestamp below the version that introduced it is UNSUPPORTED_VERSION.
    for version, timestamp in ((6, -3), (7, -4), (8, -5)):
        refused = raw(kafka_broker, topic_name, 0, timestamp, version=version)
        assert refused.error_code == ErrorCode.unsupported_version, (version, timestamp)  # type: ignore[attr-defined]
        assert (refused.offset, refused.timestamp) == (-1, -1)  # type: ignore[attr-defined]


@requires_bundled_broker
def test_max_timestamp_v11_sentinels(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    produce_batches(kafka_broker, topic_name, [[1, 2]])
    pending = raw(kafka_broker, topic_name, 0, -6, version=11)  # earliest pending upload
    assert (pending.error_code, pending.offset, pending.leader_epoch) == (ErrorCode.none, -1, -1)  # type: ignore[attr-defined]
    unknown = raw(kafka_broker, topic_name, 0, -7, version=11)
    assert unknown.error_code == ErrorCode.unsupported_version  # type: ignore[attr-defined]


def test_max_timestamp_after_delete_records(tmp_path: Path) -> None:
    """kops leaves deleted records out (Kafka would still name them); the rest as above."""
    topic = "maxts-deleted"
    with run_broker(tmp_path) as bootstrap:
        create_topic(bootstrap, topic)
        # offsets 0 | 1-3 | 4-6
        produce_batches(bootstrap, topic, [[20], [1, 15, 9], [4, 12, 3]])
        assert admin_max(bootstrap, topic) == (0, T0 + 20_000)
        admin = AdminClient({"bootstrap.servers": bootstrap})

        def delete_before(offset: int) -> None:
            result = admin.delete_records([TopicPartition(topic, 0, offset)])
            assert next(iter(result.values())).result(10).low_watermark == offset

        delete_before(1)
        assert admin_max(bootstrap, topic) == expected_max(read_back(bootstrap, topic))
        assert admin_max(bootstrap, topic) == (2, T0 + 15_000)
        delete_before(3)  # inside the batch holding the maximum
        assert admin_max(bootstrap, topic) == expected_max(read_back(bootstrap, topic))
        assert admin_max(bootstrap, topic) == (5, T0 + 12_000)


def test_max_timestamp_with_log_append_time(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, config={"message.timestamp.type": "LogAppendTime"})
    produce_batches(kafka_broker, topic_name, [[50, 60], [1, 2, 3]])
    records = read_back(kafka_broker, topic_name)
    # Every record carries its batch's append time: the answer is the first record
    # of the latest batch (of the earlier one, if both got the same millisecond).
    offset, timestamp = admin_max(kafka_broker, topic_name)
    assert (offset, timestamp) == expected_max(records)
    assert offset in (0, 2) and timestamp > T0 + 60_000
