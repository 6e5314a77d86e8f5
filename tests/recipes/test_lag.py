"""Consumer lag: records, seconds, and the Burrow-style status rules."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import AdminSession, KopsClientError
from kops.recipes.lag import LagMonitor, LagSample, evaluate_status, measure_lag
from kops.recipes.offsets import alter_group_offsets

# --------------------------------------------------------------------------- no broker


def _samples(*points: tuple[int | None, int], owned: bool = True) -> list[LagSample]:
    return [LagSample(c, end, owned) for c, end in points]


@pytest.mark.parametrize(
    ("points", "owned", "status"),
    [
        # The committed offset went back: an offset reset.
        ([(10, 20), (4, 20), (6, 20)], True, "REWOUND"),
        # Caught up once in the window.
        ([(10, 10), (10, 15), (12, 18)], True, "OK"),
        # Frozen with lag and a live owner: stuck consumer.
        ([(10, 20), (10, 25), (10, 30)], True, "STALLED"),
        # Frozen with lag and no owner: nobody consumes.
        ([(10, 20), (10, 25), (10, 30)], False, "STOPPED"),
        ([(10, 20)], False, "STOPPED"),
        # Advancing but slower than the producers.
        ([(10, 20), (12, 25), (14, 31)], True, "GROWING"),
        # Advancing and keeping pace / catching up.
        ([(10, 20), (15, 25), (20, 30)], True, "OK"),
        ([(10, 20), (15, 22), (20, 24)], True, "OK"),
        # Lag fell once in between: not GROWING.
        ([(10, 20), (18, 25), (19, 31)], True, "OK"),
        # One sample with an owner cannot tell STALLED from fine; nothing committed either.
        ([(10, 20)], True, "UNKNOWN"),
        ([(None, 20)], True, "NO_COMMITS"),
        ([(None, 20)], False, "NO_COMMITS"),
    ],
)
def test_status_rules(points: list[tuple[int | None, int]], owned: bool, status: str) -> None:
    assert evaluate_status(_samples(*points, owned=owned)) == status


# --------------------------------------------------------------------------- broker


def _produce(bootstrap: str, topic: str, n: int, timestamp_ms: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        kwargs = {} if timestamp_ms is None else {"timestamp": timestamp_ms + i}
        producer.produce(topic, value=f"v{i}".encode(), partition=0, **kwargs)
    assert producer.flush(10) == 0


def _commit(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    with AdminSession(bootstrap) as session:
        alter_group_offsets(session, group, offsets)


def test_lag_in_records_and_seconds_for_a_stopped_group(kafka_broker: str) -> None:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 2)
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    _produce(kafka_broker, topic, 10, timestamp_ms=an_hour_ago)  # record i at +i ms
    _commit(kafka_broker, group, {(topic, 0): 4, (topic, 1): 0})  # partition 1 is empty

    [report] = measure_lag(kafka_broker, [group], samples=2, interval=0.1)
    assert (report.group, report.state, report.members) == (group, "EMPTY", 0)
    rows = {p.partition: p for p in report.partitions}
    p0, p1 = rows[0], rows[1]
    assert (p0.committed, p0.log_end, p0.lag, p0.status) == (4, 10, 6, "STOPPED")
    # The oldest unconsumed record is offset 4, stamped an hour ago + 4 ms.
    assert p0.lag_seconds == pytest.approx(3600, abs=30)
    assert (p1.committed, p1.log_end, p1.lag, p1.lag_seconds, p1.status) == (0, 0, 0, 0.0, "OK")
    assert report.total_lag == 6 and report.status == "STOPPED"

    with pytest.raises(KopsClientError, match="unknown consumer group"):
        measure_lag(kafka_broker, [f"nobody-{uuid.uuid4().hex[:6]}"], samples=1)


def test_rewound_then_stalled_then_growing_with_a_live_member(kafka_broker: str) -> None:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 1)
    _produce(kafka_broker, topic, 10)
    _commit(kafka_broker, group, {(topic, 0): 8})

    with LagMonitor(kafka_broker, [group], window=2) as monitor:
        monitor.sample()
        _commit(kafka_broker, group, {(topic, 0): 3})
        monitor.sample()
        [g] = monitor.report(time_lag=False)
        assert [(p.committed, p.lag, p.status) for p in g.partitions] == [(3, 7, "REWOUND")]

        # A live member that holds the partition but never commits: STALLED.
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_broker,
                "group.id": group,
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 15
            while not consumer.assignment() and time.monotonic() < deadline:
                consumer.poll(0.1)
            assert consumer.assignment()
            monitor.sample()
            consumer.poll(0.1)
            monitor.sample()
            [g] = monitor.report(time_lag=False)
            assert g.state == "STABLE" and g.members == 1
            [p] = g.partitions
            assert (p.committed, p.lag, p.status) == (3, 7, "STALLED")
            assert p.owner is not None

            # It commits, but the producers outpace it: GROWING.
            consumer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
            monitor.sample()
            _produce(kafka_broker, topic, 5)
            consumer.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
            consumer.poll(0.1)
            monitor.sample()
            [g] = monitor.report(time_lag=False)
            assert [(p.committed, p.lag, p.status) for p in g.partitions] == [(5, 10, "GROWING")]
        finally:
            consumer.close()
