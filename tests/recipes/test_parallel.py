"""Keyed parallel processing: per-key order, contiguous commits, fail-stop, rebalance."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import ClientSettings
from kops.consume import StartAt, consume
from kops.recipes.idempotent import Idempotent, Record, as_record
from kops.recipes.parallel import KeyedExecutor, OffsetTracker, ParallelConsumer
from kops.testing import wait_until

# --------------------------------------------------------------------------- no broker


def test_tracker_commits_only_the_contiguous_watermark() -> None:
    t = OffsetTracker()
    for off in (10, 11, 12, 15, 16):  # 13-14 are a gap (compaction): never handed out
        t.add(off)
    assert t.position == 10
    t.done(11)
    t.done(15)
    assert t.position == 10
    t.done(10)
    assert t.position == 12
    t.done(12)
    assert t.position == 16
    t.done(16)
    assert t.position == 17 and t.in_flight == 0
    assert not t.add(16)  # a redelivery inside the session is ignored
    t.add(20)
    assert t.position == 20


def _records(n: int, keys: int, partitions: int = 2) -> list[Record]:
    offsets = defaultdict(int)
    out = []
    for i in range(n):
        p = i % partitions
        out.append(Record("t", p, offsets[p], key=f"k{i % keys}".encode(), value=str(i).encode()))
        offsets[p] += 1
    return out


def test_executor_keeps_per_key_order_and_runs_keys_in_parallel() -> None:
    seen: dict[bytes, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def handler(r: Record) -> None:
        time.sleep(random.uniform(0, 0.004))  # not polling: simulated work of ~2 ms
        with lock:
            seen[r.key].append(int(r.value))  # type: ignore[index,arg-type]

    records = _records(400, keys=37)
    ex = KeyedExecutor(handler, workers=8)
    t0 = time.monotonic()
    for r in records:
        ex.submit(r)
    assert ex.wait_idle(timeout=30)
    elapsed = time.monotonic() - t0
    ex.close()
    assert sum(len(v) for v in seen.values()) == 400
    for values in seen.values():
        assert values == sorted(values)
    # 400 x ~2 ms sequentially is ~0.8 s; 8 workers should be well under half of that.
    assert elapsed < 0.6, elapsed
    assert ex.positions() == {("t", 0): 200, ("t", 1): 200}


def test_executor_fail_stop_keeps_the_failed_record_uncommitted() -> None:
    def handler(r: Record) -> None:
        if r.partition == 0 and r.offset == 5:
            raise ValueError("bad record")
        time.sleep(0.001)  # not polling: simulated work

    ex = KeyedExecutor(handler, workers=4)
    for r in _records(40, keys=5):
        ex.submit(r)
    assert not ex.wait_idle(timeout=10)
    wait_until(lambda: ex.failure is not None, 10, message="the executor to record its failure")
    assert isinstance(ex.failure, ValueError)
    assert ex.positions()[("t", 0)] <= 5
    ex.close()


def test_executor_on_error_carries_on() -> None:
    failed: list[int] = []

    def handler(r: Record) -> None:
        if r.offset % 10 == 3:
            raise ValueError(r.offset)

    ex = KeyedExecutor(handler, workers=3, on_error=lambda r, e: failed.append(r.offset))
    for r in _records(40, keys=5):
        ex.submit(r)
    assert ex.wait_idle(timeout=10)
    ex.close()
    assert sorted(failed) == [3, 3, 13, 13]
    assert ex.positions() == {("t", 0): 20, ("t", 1): 20}


# --------------------------------------------------------------------------- real broker


def _produce(bootstrap: str, topic: str, n: int, keys: int) -> None:
    p = Producer(ClientSettings(bootstrap).producer_config(**{"enable.idempotence": True}))
    for i in range(n):
        p.produce(topic, key=f"k{i % keys}".encode(), value=str(i).encode())
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        ClientSettings(bootstrap).consumer_config(
            group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 300}
        )
    )


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = _consumer(bootstrap, group)
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


@pytest.fixture
def topic(kafka_broker: str) -> str:
    name = f"par-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, name, 4)
    return name


def test_parallel_consumer_processes_all_in_key_order_and_commits(
    kafka_broker: str, topic: str
) -> None:
    _produce(kafka_broker, topic, 3000, keys=60)
    seen: dict[bytes, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def handler(msg) -> None:  # type: ignore[no-untyped-def]
        if random.random() < 0.05:
            time.sleep(0.002)  # not polling: an occasional slow record
        with lock:
            seen[msg.key()].append(int(msg.value()))

    group = f"g-{uuid.uuid4().hex[:6]}"
    pc = ParallelConsumer(_consumer(kafka_broker, group), handler, workers=8, max_in_flight=300)
    pc.subscribe([topic])
    stats = pc.run(max_records=3000)
    pc.consumer.close()
    assert stats.processed == 3000
    assert sum(len(v) for v in seen.values()) == 3000
    for values in seen.values():
        assert values == sorted(values)
    ends = {p.partition: p.end_offset for p in admin.describe_topic(kafka_broker, topic).partitions}
    assert _committed(kafka_broker, group, topic, 4) == ends


def test_failure_stops_and_a_restart_resumes_exactly_once_with_idempotent(
    kafka_broker: str, topic: str, tmp_path: Path
) -> None:
    _produce(kafka_broker, topic, 800, keys=20)
    once = Idempotent(tmp_path / "dedup.db", namespace="par")
    effects: list[str] = []
    lock = threading.Lock()
    poison = {"armed": True}

    def handler(msg) -> None:  # type: ignore[no-untyped-def]
        r = as_record(msg)
        if poison["armed"] and r.value == b"400":
            raise RuntimeError("transient failure")
        with lock:
            effects.append(f"{r.partition}/{r.offset}")

    group = f"g-{uuid.uuid4().hex[:6]}"
    pc = ParallelConsumer(_consumer(kafka_broker, group), once(handler), workers=4)
    pc.subscribe([topic])
    with pytest.raises(RuntimeError, match="transient"):
        pc.run(idle_timeout=3)
    pc.consumer.close()
    first_run = len(effects)
    assert 0 < first_run < 800

    poison["armed"] = False
    pc = ParallelConsumer(_consumer(kafka_broker, group), once(handler), workers=4)
    pc.subscribe([topic])
    pc.run(idle_timeout=2)
    pc.consumer.close()
    # Records done before the stop but above the watermark were redelivered and skipped.
    assert len(effects) == len(set(effects)) == 800
    assert once.stats.failures == 1


def test_rebalance_between_two_parallel_consumers_loses_nothing(
    kafka_broker: str, topic: str
) -> None:
    _produce(kafka_broker, topic, 4000, keys=80)
    group = f"g-{uuid.uuid4().hex[:6]}"
    seen: list[bytes] = []
    by_member: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def handler(member: str):  # type: ignore[no-untyped-def]
        def handle(msg) -> None:  # type: ignore[no-untyped-def]
            time.sleep(0.001)  # not polling: simulated work, so a hand-over lands mid-way
            with lock:
                seen.append(msg.value())
                by_member[member] += 1

        return handle

    # Two workers each: a alone needs ~2 s, so b's join lands mid-way.
    a = ParallelConsumer(_consumer(kafka_broker, group), handler("a"), workers=2, max_in_flight=200)
    b = ParallelConsumer(_consumer(kafka_broker, group), handler("b"), workers=2, max_in_flight=200)
    # b subscribes only once a is processing: librdkafka joins the group from subscribe()
    # in its own thread, so an early b could take every partition and then, never polling,
    # hold up the revoke a's join needs until max.poll.interval.ms.
    a.subscribe([topic])
    ta = threading.Thread(target=a.run, kwargs={"idle_timeout": 6})
    ta.start()
    # b joins while a is busy: a's revoke must finish and commit.
    wait_until(lambda: by_member["a"] > 0, 30, message="consumer a to be processing")

    def run_b() -> None:
        b.subscribe([topic])
        b.run(idle_timeout=6)

    tb = threading.Thread(target=run_b)
    tb.start()
    ta.join(60)
    tb.join(60)
    a.consumer.close()
    b.consumer.close()
    assert set(seen) == {str(i).encode() for i in range(4000)}
    assert by_member["a"] > 0 and by_member["b"] > 0, dict(by_member)
    # Per-key order holds across the hand-over (ignoring redelivered copies).
    firsts: dict[int, list[int]] = defaultdict(list)
    for v in dict.fromkeys(seen):
        firsts[int(v) % 80].append(int(v))
    for values in firsts.values():
        assert values == sorted(values)
    # Revocations drain and commit first, so a hand-over should redeliver (almost) nothing.
    assert len(seen) - 4000 <= 50


def test_with_the_dlq_wrapper_and_idempotent_helper(
    kafka_broker: str, topic: str, tmp_path: Path
) -> None:
    from kops.recipes.retry import wrap

    admin.create_topic(kafka_broker, f"{topic}.dlq", 1)
    _produce(kafka_broker, topic, 600, keys=30)
    handled: list[int] = []
    lock = threading.Lock()

    def handler(msg) -> None:  # type: ignore[no-untyped-def]
        n = int(msg.value())
        if n % 100 == 7:
            raise ValueError(f"poison record {n}")
        with lock:
            handled.append(n)

    producer = Producer(ClientSettings(kafka_broker).producer_config())
    group = f"g-{uuid.uuid4().hex[:6]}"
    # No retry tiers: a failing record goes straight to <topic>.dlq.
    retrying = wrap(handler, producer, group=group, attempts=1, ladder=())
    once = Idempotent(tmp_path / "dedup.db", namespace=group)
    pc = ParallelConsumer(
        _consumer(kafka_broker, group), once(retrying), workers=4, before_commit=retrying.flush
    )
    pc.subscribe([topic])
    pc.run(max_records=600)
    pc.consumer.close()
    assert sorted(handled) == [n for n in range(600) if n % 100 != 7]
    dead = [
        int(r.value)
        for r in consume(kafka_broker, f"{topic}.dlq", start=StartAt.beginning(), idle_timeout=2)
    ]
    assert sorted(dead) == [7, 107, 207, 307, 407, 507]
    ends = {p.partition: p.end_offset for p in admin.describe_topic(kafka_broker, topic).partitions}
    assert _committed(kafka_broker, group, topic, 4) == ends
