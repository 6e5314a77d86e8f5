"""KIP-467: a batch refused for some of its records names those records."""

from __future__ import annotations

import datetime

import pytest
from kio.schema.errors import ErrorCode
from kio.schema.produce.v8 import request as v8
from kio.static.primitive import i16, i32, i32Timedelta

from kops.protocol.batch import COMPRESSION_LZ4, COMPRESSION_NONE, build_batch
from kops.protocol.client import send_request
from tests.broker.clients import consume_all, create_topic, produce

COMPACTED = {"cleanup.policy": "compact"}


def _produce(bootstrap: str, topic: str, records: bytes) -> object:
    host, port = bootstrap.rsplit(":", 1)
    request = v8.ProduceRequest(
        transactional_id=None,
        acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=5)),
        topic_data=(
            v8.TopicProduceData(
                name=topic,
                partition_data=(v8.PartitionProduceData(index=i32(0), records=records),),
            ),
        ),
    )
    response = send_request(host, int(port), request)
    return response.responses[0].partition_responses[0]


@pytest.mark.parametrize("compression", [COMPRESSION_NONE, COMPRESSION_LZ4])
def test_keyless_records_on_a_compacted_topic_are_named(
    kafka_broker: str, topic_name: str, compression: int
) -> None:
    create_topic(kafka_broker, topic_name, config=COMPACTED)
    keys = [b"a", None, b"c", None, b"e"]
    batch = build_batch(
        [(key, b"v", []) for key in keys], timestamp_ms=1_700_000_000_000, compression=compression
    )
    partition = _produce(kafka_broker, topic_name, batch)
    assert partition.error_code == ErrorCode.invalid_record
    assert [(e.batch_index, e.batch_index_error_message) for e in partition.record_errors] == [
        (1, "Compacted topic cannot accept message without key"),
        (3, "Compacted topic cannot accept message without key"),
    ]
    assert partition.error_message == "Compacted topic cannot accept message without key"
    # The whole batch was refused (as in Kafka); keyed records still go in.
    produce(kafka_broker, topic_name, [(b"a", b"kept")])
    assert [m.value() for m in consume_all(kafka_broker, topic_name, 1)] == [b"kept"]


def test_a_valid_batch_has_no_record_errors(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, config=COMPACTED)
    partition = _produce(kafka_broker, topic_name, build_batch([(b"k", b"v", [])]))
    assert partition.error_code == ErrorCode.none
    assert partition.record_errors == ()
