"""Fetch across the versions the broker advertises, with a hand-made client."""

from __future__ import annotations

import datetime
import importlib

import pytest
from kio.schema.errors import ErrorCode

from kops.protocol.messages import build
from tests.broker.clients import create_topic, produce
from tests.broker.groups.group_helpers import RawClient


@pytest.mark.parametrize("version", [4, 8, 9, 11])
def test_fetch_every_served_version(kafka_broker: str, topic_name: str, version: int) -> None:
    # v4-v8 have no current_leader_epoch; v9+ do (and -1 skips the check).
    create_topic(kafka_broker, topic_name, 1)
    produce(kafka_broker, topic_name, [(b"k", b"v", None, 0)] * 3)
    schema = importlib.import_module(f"kio.schema.fetch.v{version}.request")
    # build() drops the fields a version lacks.
    partition = build(
        schema.FetchPartition,
        partition=0,
        current_leader_epoch=-1,
        fetch_offset=0,
        log_start_offset=-1,
        partition_max_bytes=1 << 20,
    )
    request = build(
        schema.FetchRequest,
        max_wait=datetime.timedelta(milliseconds=100),
        min_bytes=1,
        session_id=0,
        session_epoch=-1,
        topics=(schema.FetchTopic(topic=topic_name, partitions=(partition,)),),
        forgotten_topics_data=(),
        rack_id="",
    )
    client = RawClient(kafka_broker)
    try:
        response = client.send(request)
    finally:
        client.close()
    [data] = response.responses[0].partitions
    assert data.error_code == ErrorCode.none
    assert data.high_watermark == 3
    assert data.records
