"""Small wrappers over real clients used by the broker tests."""

from __future__ import annotations

import datetime
import importlib
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kops.protocol.messages import build


def create_topic(
    bootstrap: str, name: str, partitions: int = 1, config: dict | None = None
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    futures[name].result(10)


def produce(bootstrap: str, topic: str, records: list[tuple], **settings: object) -> list:
    """Produce (key, value[, headers[, partition]]) tuples with acks=all; return delivered messages."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **settings})
    delivered, failed = [], []

    def report(err: object, msg: object) -> None:
        (failed if err else delivered).append(err or msg)

    for record in records:
        key, value = record[0], record[1]
        kwargs = {}
        if len(record) > 2 and record[2]:
            kwargs["headers"] = record[2]
        if len(record) > 3:
            kwargs["partition"] = record[3]
        producer.produce(topic, value=value, key=key, on_delivery=report, **kwargs)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failed, failed
    return delivered


def consume_all(
    bootstrap: str, topic: str, expected: int, partitions: int = 1, timeout: float = 20
) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        messages.append(msg)
    consumer.close()
    return messages


def fetch_request(
    topic: str,
    version: int = 12,
    *,
    offset: int = 0,
    isolation: int = 0,
    max_wait_ms: int = 100,
) -> Any:
    """A consumer's Fetch of `version` for partition 0 of `topic` (kio; build() drops the
    fields a version lacks)."""
    schema = importlib.import_module(f"kio.schema.fetch.v{version}.request")
    partition = build(
        schema.FetchPartition,
        partition=0,
        current_leader_epoch=-1,
        fetch_offset=offset,
        last_fetched_epoch=-1,
        log_start_offset=-1,
        partition_max_bytes=1 << 20,
    )
    return build(
        schema.FetchRequest,
        replica_id=-1,
        max_wait=datetime.timedelta(milliseconds=max_wait_ms),
        min_bytes=1,
        max_bytes=1 << 24,
        isolation_level=isolation,
        session_id=0,
        session_epoch=-1,
        topics=(schema.FetchTopic(topic=topic, partitions=(partition,)),),
        forgotten_topics_data=(),
        rack_id="",
        cluster_id=None,
    )
