"""Rewinding a group's committed offsets, undoing it, and seeking live consumers to a time."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import AdminSession, KopsClientError
from kops.recipes.offsets import alter_group_offsets, committed_offsets
from kops.recipes.rewind import (
    GroupActiveError,
    PartitionPlan,
    RewindPlan,
    RewindTo,
    SeekToTime,
    execute_plan,
    export_offsets,
    plan_rewind,
    read_offsets_file,
    rewind,
)
from kops.testing import wait_until

BASE_MS = 1_700_000_000_000  # records are stamped BASE_MS + i seconds


def _produce(bootstrap: str, topic: str, n: int, partitions: int = 1) -> None:
    """n records, i-th in partition i % partitions with timestamp BASE_MS + i s.

    One record per batch, so time lookups are exact on brokers that index per batch.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(n):
        producer.produce(
            topic,
            value=f"v{i}".encode(),
            key=f"k{i}".encode(),
            partition=i % partitions,
            timestamp=BASE_MS + i * 1000,
        )
        producer.flush(10)
    assert producer.flush(10) == 0


def _setup(bootstrap: str, partitions: int = 1, n: int = 10) -> tuple[str, str]:
    topic = f"rw-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    admin.create_topic(bootstrap, topic, partitions)
    _produce(bootstrap, topic, n, partitions)
    return topic, group


def _commit(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    with AdminSession(bootstrap) as session:
        alter_group_offsets(session, group, offsets)


def _committed(bootstrap: str, group: str) -> dict[tuple[str, int], int | None]:
    with AdminSession(bootstrap) as session:
        return committed_offsets(session, group)


def _group_consumer(bootstrap: str, group: str, **extra: object) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "session.timeout.ms": 6000,
            **extra,
        }
    )


def _read(consumer: Consumer, n: int, timeout: float = 20) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            out.append(msg)
    return out


# --------------------------------------------------------------------------- no broker


def test_plan_counts_rereads_and_skips() -> None:
    back = PartitionPlan("t", 0, current=10, new=4, log_start=0, log_end=12)
    ahead = PartitionPlan("t", 1, current=3, new=12, log_start=0, log_end=12)
    fresh = PartitionPlan("t", 2, current=None, new=0, log_start=0, log_end=5)
    assert (back.reread, back.skipped) == (6, 0)
    assert (ahead.reread, ahead.skipped) == (0, 9)
    assert (fresh.reread, fresh.skipped) == (0, 0)
    plan = RewindPlan("g", "to earliest", "EMPTY", 0, [back, ahead, fresh])
    assert (plan.reread, plan.skipped) == (6, 9)
    assert plan.previous_offsets() == {("t", 0): 10, ("t", 1): 3}


def test_offsets_file_round_trip_and_kafka_formats(tmp_path: Path) -> None:
    plan = RewindPlan(
        "g",
        "x",
        "EMPTY",
        0,
        [
            PartitionPlan("orders", 0, 7, 0, 0, 9),
            PartitionPlan("orders", 1, None, 0, 0, 9),
        ],
    )
    path = tmp_path / "prev.csv"
    assert export_offsets(plan, path) == [("orders", 1)]
    assert path.read_bytes() == b"orders,0,7\n"
    assert read_offsets_file(path) == {("orders", 0): 7}

    # Kafka's multi-group form (group,topic,partition,offset), a header and comments.
    other = tmp_path / "kafka.csv"
    other.write_text("topic,partition,offset\n# saved\n\ng,a,0,5\nh,a,0,9\nb,1,3\n")
    assert read_offsets_file(other, "g") == {("a", 0): 5, ("b", 1): 3}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,0,5\na,x,1\n")
    with pytest.raises(KopsClientError, match=r"bad\.csv:2:3: partition must be a whole number"):
        read_offsets_file(bad)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("orders,0,5\norders,1,five\n", ":2:10:", "offset must be a whole number >= 0, got 'five'"),
        ("orders,0,5\n\n# note\norders,-1,3\n", ":4:8:", "partition must be a whole number"),
        ("orders,0,5\norders,1\n", ":2:9:", "expected topic,partition,offset"),
        ("orders,0,5,extra,more\n", ":1:12:", "got 5 fields"),
        ("orders,0,abc\n", ":1:10:", "offset must be a whole number"),  # not a header
        ('orders,0,5\n"orders,1,6\n', ":2:1:", "not valid CSV"),
        (",0,5\n", ":1:1:", "empty topic name"),
    ],
)
def test_malformed_offsets_file_names_line_and_column(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    path = tmp_path / "offsets.csv"
    path.write_text(text)
    with pytest.raises(KopsClientError) as err:
        read_offsets_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}{where} "), message
    assert what in message and "\n" not in message


def test_offsets_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "offsets.csv"
    path.write_bytes(b"orders,0,5\n\xff\xfe\n")
    with pytest.raises(KopsClientError, match="not UTF-8"):
        read_offsets_file(path)


# --------------------------------------------------------------------------- broker


def test_rewind_to_time_then_group_rereads_from_there(kafka_broker: str) -> None:
    topic, group = _setup(kafka_broker, n=10)
    _commit(kafka_broker, group, {(topic, 0): 10})  # the group has read everything

    plan = rewind(kafka_broker, group, topic, RewindTo.datetime(BASE_MS + 6_000))
    assert not plan.executed
    assert [(p.current, p.new, p.reread) for p in plan.partitions] == [(10, 6, 4)]
    assert _committed(kafka_broker, group) == {(topic, 0): 10}  # a dry run changes nothing

    plan = rewind(kafka_broker, group, topic, RewindTo.datetime(BASE_MS + 6_000), execute=True)
    assert plan.executed
    assert _committed(kafka_broker, group) == {(topic, 0): 6}

    consumer = _group_consumer(kafka_broker, group)
    try:
        consumer.subscribe([topic])
        got = _read(consumer, 4)
        assert [(m.offset(), m.value()) for m in got] == [
            (i, f"v{i}".encode()) for i in range(6, 10)
        ]
        assert _read(consumer, 1, timeout=1) == []
    finally:
        consumer.close()


def test_duration_and_time_past_the_end_go_to_log_end(kafka_broker: str) -> None:
    topic, group = _setup(kafka_broker, partitions=2, n=6)
    _commit(kafka_broker, group, {(topic, 0): 1, (topic, 1): 0})
    # Records are from 2023: "the last 1 hour" holds none of them.
    plan = rewind(kafka_broker, group, topic, RewindTo.duration(3600), execute=True)
    assert [(p.partition, p.new, p.skipped) for p in plan.partitions] == [(0, 3, 2), (1, 3, 3)]
    assert all("log end" in (p.note or "") for p in plan.partitions)
    assert _committed(kafka_broker, group) == {(topic, 0): 3, (topic, 1): 3}


def test_offset_shift_ends_and_clamping(kafka_broker: str) -> None:
    topic, group = _setup(kafka_broker, partitions=2, n=8)  # 4 records per partition
    _commit(kafka_broker, group, {(topic, 0): 2, (topic, 1): 3})

    plan = plan_rewind(kafka_broker, group, topic, RewindTo.shift(-1), partitions=[1])
    assert [(p.partition, p.current, p.new) for p in plan.partitions] == [(1, 3, 2)]
    plan = plan_rewind(kafka_broker, group, topic, RewindTo.shift(+5))
    assert [(p.new, p.note) for p in plan.partitions] == [
        (4, "clamped to log end 4"),
        (4, "clamped to log end 4"),
    ]
    plan = plan_rewind(kafka_broker, group, topic, RewindTo.offset(9))
    assert [p.new for p in plan.partitions] == [4, 4]
    assert [
        p.new for p in plan_rewind(kafka_broker, group, topic, RewindTo.earliest()).partitions
    ] == [0, 0]
    assert [
        p.new for p in plan_rewind(kafka_broker, group, topic, RewindTo.latest()).partitions
    ] == [4, 4]

    fresh = f"g-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KopsClientError, match="no committed offset"):
        plan_rewind(kafka_broker, fresh, topic, RewindTo.shift(-1))
    with pytest.raises(KopsClientError, match="has no partition 7"):
        plan_rewind(kafka_broker, group, topic, RewindTo.earliest(), partitions=[7])
    with pytest.raises(KopsClientError, match="unknown topic"):
        plan_rewind(kafka_broker, group, "no-such-topic-rw", RewindTo.earliest())


def test_export_then_from_file_undoes_a_rewind(kafka_broker: str, tmp_path: Path) -> None:
    topic, group = _setup(kafka_broker, partitions=2, n=8)
    _commit(kafka_broker, group, {(topic, 0): 3, (topic, 1): 4})
    saved = tmp_path / "before.csv"

    plan = plan_rewind(kafka_broker, group, topic, RewindTo.earliest())
    export_offsets(plan, saved)
    execute_plan(kafka_broker, plan)
    assert _committed(kafka_broker, group) == {(topic, 0): 0, (topic, 1): 0}

    undo = rewind(
        kafka_broker, group, None, RewindTo.offsets(read_offsets_file(saved)), execute=True
    )
    assert [(p.current, p.new) for p in undo.partitions] == [(0, 3), (0, 4)]
    assert _committed(kafka_broker, group) == {(topic, 0): 3, (topic, 1): 4}


def test_refuses_to_execute_while_the_group_has_members(kafka_broker: str) -> None:
    topic, group = _setup(kafka_broker, n=4)
    consumer = _group_consumer(kafka_broker, group, **{"auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        assert len(_read(consumer, 4)) == 4
        consumer.commit(asynchronous=False)

        plan = plan_rewind(kafka_broker, group, topic, RewindTo.earliest())  # a preview is fine
        assert plan.active_members == 1 and plan.group_state == "STABLE"
        with pytest.raises(GroupActiveError, match="1 active member"):
            execute_plan(kafka_broker, plan)
        assert _committed(kafka_broker, group) == {(topic, 0): 4}
    finally:
        consumer.close()

    # Once the consumer has left, the same rewind goes through.
    def rewound() -> bool:
        try:
            rewind(kafka_broker, group, topic, RewindTo.earliest(), execute=True)
        except GroupActiveError:
            return False
        return True

    wait_until(rewound, 10, message="the group to be empty so the rewind goes through")
    assert _committed(kafka_broker, group) == {(topic, 0): 0}


def test_seek_to_time_positions_a_live_consumer_once(kafka_broker: str) -> None:
    topic, group = _setup(kafka_broker, partitions=2, n=10)
    _commit(kafka_broker, group, {(topic, 0): 5, (topic, 1): 5})  # at the end
    seek = SeekToTime(BASE_MS + 6_000)
    consumer = _group_consumer(kafka_broker, group)
    try:
        consumer.subscribe([topic], on_assign=seek)
        got = _read(consumer, 4)
        # Records 6..9: partition 0 holds even ones, partition 1 odd ones.
        assert sorted(int(m.value()[1:]) for m in got) == [6, 7, 8, 9]
        assert seek.positioned == {(topic, 0), (topic, 1)}
    finally:
        consumer.close()


class _FakeConsumer:
    """Just enough of a Consumer for SeekToTime: answers time lookups, records assigns."""

    def __init__(self, found: dict[int, int], cooperative: bool = False):
        self.found = found
        self.cooperative = cooperative
        self.assigned: list[list[tuple[int, int]]] = []

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list:
        return [TopicPartition(tp.topic, tp.partition, self.found[tp.partition]) for tp in tps]

    def assign(self, tps: list[TopicPartition]) -> None:
        if self.cooperative:
            from confluent_kafka import KafkaException

            raise KafkaException("use incremental_assign")
        self.assigned.append([(tp.partition, tp.offset) for tp in tps])

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        self.assigned.append([(tp.partition, tp.offset) for tp in tps])


@pytest.mark.parametrize("cooperative", [False, True])
def test_seek_to_time_seeks_each_partition_once(cooperative: bool) -> None:
    from confluent_kafka import OFFSET_END, OFFSET_INVALID

    fake = _FakeConsumer({0: 5, 1: -1, 2: 7}, cooperative)
    seek = SeekToTime(123)
    seek(fake, [TopicPartition("t", 0), TopicPartition("t", 1)])  # type: ignore[arg-type]
    # Partition 1 has no record at or after the time: it starts at the end.
    assert fake.assigned[-1] == [(0, 5), (1, OFFSET_END)]
    # A later rebalance: 0 comes back (resume from committed), 2 is new (seek).
    seek(fake, [TopicPartition("t", 0), TopicPartition("t", 2)])  # type: ignore[arg-type]
    assert fake.assigned[-1] == [(0, OFFSET_INVALID), (2, 7)]
