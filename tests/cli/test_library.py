"""The library under the CLI (kops.admin, kops.produce, kops.consume), called directly."""

from __future__ import annotations

import pytest

from kops import admin
from kops.client import ClientSettings, TopicAlreadyExists, UnknownTopic
from kops.consume import StartAt, consume
from kops.produce import OutgoingRecord, produce_records


def test_admin_produce_consume_round_trip(kafka_broker: str, topic: str) -> None:
    settings = ClientSettings(kafka_broker)
    admin.create_topic(settings, topic, partitions=2, config={"retention.ms": "600000"})
    with pytest.raises(TopicAlreadyExists):
        admin.create_topic(kafka_broker, topic, partitions=2)
    assert topic in {t.name for t in admin.list_topics(kafka_broker)}

    report = produce_records(
        settings,
        topic,
        [
            OutgoingRecord(b"v0", key=b"a", partition=1, headers=[("h", b"1")]),
            OutgoingRecord(None, key=b"tombstone", partition=1, timestamp=1_700_000_000_000),
        ],
    )
    assert report.ok, report.errors
    assert (report.sent, report.delivered, dict(report.partitions)) == (2, 2, {1: 2})

    info = admin.describe_topic(settings, topic)
    assert [(p.partition, p.start_offset, p.end_offset) for p in info.partitions] == [
        (0, 0, 0),
        (1, 0, 2),
    ]
    assert info.total_records == 2
    assert info.configs is not None
    assert {c.name: c.value for c in info.configs}["retention.ms"] == "600000"

    records = list(consume(settings, topic, start=StartAt.beginning(), stop_at_end=True))
    assert [(r.partition, r.offset, r.key, r.value) for r in records] == [
        (1, 0, b"a", b"v0"),
        (1, 1, b"tombstone", None),
    ]
    assert records[0].headers == [("h", b"1")]
    assert records[1].timestamp == 1_700_000_000_000
    assert records[1].to_json()["value"] is None

    admin.delete_topic(settings, topic)
    with pytest.raises(UnknownTopic):
        admin.describe_topic(settings, topic)


def test_consume_stops_on_max_messages_and_idle_timeout(kafka_broker: str, topic: str) -> None:
    admin.create_topic(kafka_broker, topic, partitions=1)
    assert produce_records(kafka_broker, topic, [OutgoingRecord(b"x")] * 3).ok
    got = list(consume(kafka_broker, topic, start=StartAt.offset(-3), max_messages=2))
    assert [r.offset for r in got] == [0, 1]
    idle = list(consume(kafka_broker, topic, start=StartAt.end(), idle_timeout=0.5))
    assert idle == []
