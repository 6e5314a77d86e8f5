"""Replaying a time window into another topic: exact window, records intact, no group touched."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from kops import admin
from kops.client import AdminSession, KopsClientError, UnknownTopic
from kops.recipes.offsets import alter_group_offsets, committed_offsets, list_group_ids
from kops.recipes.replay import plan_window, replay

BASE_MS = 1_700_000_000_000


def _produce_batched(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    """n records produced in one go (several per batch), timestamp BASE_MS + i s."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for i in range(n):
        producer.produce(
            topic,
            value=f"v{i}".encode(),
            key=f"k{i % 3}".encode(),
            partition=i % partitions,
            timestamp=BASE_MS + i * 1000,
            headers=[("seq", str(i).encode()), ("null", None)],
        )
    assert producer.flush(10) == 0


def _read_all(bootstrap: str, topic: str, partitions: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.monotonic() + 15
    while len(eof) < partitions and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error() is not None:
            eof.add(msg.partition())
            continue
        out.append(msg)
    consumer.close()
    return out


def test_replay_copies_exactly_the_window(kafka_broker: str) -> None:
    src, dst = f"src-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, src, 2)
    admin.create_topic(kafka_broker, dst, 2)
    _produce_batched(kafka_broker, src, 40, partitions=2)
    with AdminSession(kafka_broker) as session:
        alter_group_offsets(session, group, {(src, 0): 20, (src, 1): 20})

    seen: list[tuple[int, int]] = []
    report = replay(
        kafka_broker,
        src,
        dst,
        BASE_MS + 11_000,
        BASE_MS + 27_000,
        keep_partition=True,
        progress=lambda done, total: seen.append((done, total)),
    )
    # [11 s, 27 s): records 11..26, whatever batches they were written in.
    assert report.ok and report.copied == 16
    assert report.per_partition == {0: 8, 1: 8}
    assert seen[-1][0] == report.read

    copied = _read_all(kafka_broker, dst, 2)
    assert sorted(int(m.value()[1:]) for m in copied) == list(range(11, 27))
    for m in copied:
        i = int(m.value()[1:])
        assert m.key() == f"k{i % 3}".encode()
        assert m.headers() == [("seq", str(i).encode()), ("null", None)]
        assert m.timestamp()[1] == BASE_MS + i * 1000
        assert m.partition() == i % 2
    # Per-partition order is kept.
    for p in (0, 1):
        values = [int(m.value()[1:]) for m in copied if m.partition() == p]
        assert values == sorted(values)

    # No group's offsets moved and no group was created.
    with AdminSession(kafka_broker) as session:
        assert committed_offsets(session, group) == {(src, 0): 20, (src, 1): 20}
        assert not [g for g in list_group_ids(session) if g.startswith("kops-replay")]


def test_replay_rate_create_and_errors(kafka_broker: str) -> None:
    src, dst = f"src-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, src, 1)
    _produce_batched(kafka_broker, src, 12, partitions=1)

    with pytest.raises(UnknownTopic, match="--create"):
        replay(kafka_broker, src, dst, BASE_MS, BASE_MS + 60_000)
    with pytest.raises(KopsClientError, match="must differ"):
        replay(kafka_broker, src, src, BASE_MS, BASE_MS + 60_000)
    with pytest.raises(KopsClientError, match="empty window"):
        replay(kafka_broker, src, dst, BASE_MS + 5, BASE_MS)

    started = time.monotonic()
    report = replay(kafka_broker, src, dst, BASE_MS, BASE_MS + 60_000, rate=40, create=True)
    elapsed = time.monotonic() - started
    assert report.copied == 12
    assert elapsed >= 11 / 40  # the 12th record is due 0.275 s in
    assert [int(m.value()[1:]) for m in _read_all(kafka_broker, dst, 1)] == list(range(12))

    # A window after the last record: nothing to read, nothing copied.
    windows = plan_window(kafka_broker, src, BASE_MS + 100_000, BASE_MS + 200_000)
    assert [(w.start, w.estimate) for w in windows] == [(None, 0)]
    assert replay(kafka_broker, src, dst, BASE_MS + 100_000, BASE_MS + 200_000).copied == 0
