"""Partition replication across three real broker processes, driven by real clients.

Followers fetch from their leader; the leader's high watermark follows the
ISR; acks=all waits for it. When a leader is killed with SIGKILL, the
controller fences it after broker.session.timeout.ms and elects the first live
ISR replica with a new leader epoch; the idempotent producer retries there, and
every acknowledged record is in the log exactly once, in order. The killed
broker comes back, truncates what it had beyond the new leader's log (leader
epochs, KIP-101/279), catches up and rejoins the ISR.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.clients import ALL_ACTIVE, create, partitions_seen_by, ready
from tests.cluster.processes import Cluster, wait_brokers

pytestmark = requires_bundled_broker

# Quick ISR changes, so that a test sees a stopped follower leave and a caught-up one return.
REPLICATION = {"replica.lag.time.max.ms": "2000", "replica.fetch.backoff.ms": "100"}
STRICT = {"min.insync.replicas": "2"}


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:  # type: ignore[misc]
    cluster = Cluster(tmp_path, config=REPLICATION)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def _state(cluster: Cluster, node: int, topic: str, partition: int = 0) -> tuple[int, list[int]]:
    """(leader, ISR) of a partition as broker `node` answers Metadata; (-1, []) if unknown."""
    partitions = partitions_seen_by(cluster, node, topic)
    if partitions is None or partition not in partitions:
        return -1, []
    p = partitions[partition]
    return p.leader_id, sorted(p.isr_nodes)


def _live_view(cluster: Cluster, topic: str) -> tuple[int, list[int]]:
    for node in cluster.live():
        try:
            return _state(cluster, node, topic)
        except OSError:
            continue
    return -1, []


class _Ledger:
    """An idempotent acks=all producer writing 0, 1, 2, ... and noting what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, first: int = 0) -> None:
        self.topic = topic
        self.acked: list[int] = []
        self.failed: list[KafkaError] = []
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # Long enough to ride out a failover; a delivery failure is a test failure.
                "message.timeout.ms": 120000,
            }
        )
        self._next = first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _report(self, err: KafkaError | None, msg: object) -> None:
        if err is not None:
            self.failed.append(err)
        else:
            self.acked.append(int(msg.value()))  # type: ignore[attr-defined]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.produce(
                    self.topic, str(self._next).encode(), on_delivery=self._report
                )
                self._next += 1
            except BufferError:
                pass
            self._producer.poll(0.002)

    def start(self) -> _Ledger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self._producer.flush(150) == 0

    def acked_count(self) -> int:
        return len(self.acked)


#: Answers while a partition's leadership moves (confluent-kafka does not mark them retriable
#: on a watermark query).
_LEADER_MOVING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)


def _read_all(bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "audit", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    marks: list[int] = []

    def watermarks() -> bool:
        # Leadership may still move (the preferred leader returns after a heal): the
        # query answers NOT_LEADER_FOR_PARTITION until the client's metadata catches up.
        try:
            marks[:] = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() not in _LEADER_MOVING:
                raise
            return False
        return True

    wait_until(watermarks, 60)
    low, high = marks
    values: list[int] = []
    try:

        def done() -> bool:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    values.append(int(msg.value()))
            return len(values) >= high - low

        wait_until(done, timeout=60)
    finally:
        consumer.close()
    return values


def _check_ledger(values: list[int], acked: list[int]) -> None:
    assert len(values) == len(set(values)), "a record is in the log twice"
    assert values == sorted(values), "records are out of order"
    missing = set(acked) - set(values)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"


@pytest.mark.parametrize(
    "rounds",
    # Two in the default run; the ten in a row with -m slow (about 80 s).
    [2, pytest.param(10, marks=[pytest.mark.slow, pytest.mark.timeout(900)])],
)
def test_every_acknowledged_record_survives_leader_kills(cluster: Cluster, rounds: int) -> None:
    follower = ready(cluster)
    create(cluster, follower, "ledger", 1, 3, STRICT)
    wait_until(lambda: _state(cluster, follower, "ledger")[1] == [1, 2, 3])
    ledger = _Ledger(",".join(cluster.address(n) for n in cluster.brokers), "ledger").start()
    failovers = []
    for _round in range(rounds):
        wait_until(lambda: ledger.acked_count() >= 100, timeout=60)
        leader, _ = _live_view(cluster, "ledger")
        assert leader > 0
        before = ledger.acked_count()
        killed = time.monotonic()
        cluster.brokers[leader].kill()
        wait_until(lambda before=before: ledger.acked_count() > before + 50, timeout=60)
        failovers.append(time.monotonic() - killed)
        cluster.brokers[leader].start()
        wait_brokers(cluster, ALL_ACTIVE, timeout=30)
        # Back in the ISR: it truncated what the new leader never had and caught up.
        wait_until(lambda: _live_view(cluster, "ledger")[1] == [1, 2, 3], timeout=60)
    ledger.stop()
    print(f"produce resumed after leader SIGKILL in {min(failovers):.2f}-{max(failovers):.2f} s")
    assert ledger.failed == []
    _check_ledger(_read_all(cluster.address(follower), "ledger"), ledger.acked)


def test_with_two_of_three_down_acks_all_is_refused_and_committed_records_stay(
    cluster: Cluster,
) -> None:
    follower = ready(cluster)
    create(cluster, follower, "strict", 1, 3, STRICT)
    wait_until(lambda: _state(cluster, follower, "strict")[1] == [1, 2, 3])
    ledger = _Ledger(cluster.address(follower), "strict").start()
    wait_until(lambda: ledger.acked_count() >= 200, timeout=60)
    ledger.stop()
    committed = list(ledger.acked)

    # The two followers die. One broker is no controller quorum either, so the ISR
    # cannot shrink: the leader appends but its high watermark cannot move.
    survivor, _ = _state(cluster, follower, "strict")
    for node in cluster.brokers:
        if node != survivor:
            cluster.brokers[node].kill()

    refused: list[KafkaError] = []
    producer = Producer(
        {
            "bootstrap.servers": cluster.address(survivor),
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 3000,
        }
    )
    for i in range(10):
        producer.produce("strict", f"late{i}".encode(), on_delivery=lambda e, _m: refused.append(e))
    producer.flush(30)
    assert len(refused) == 10 and all(e is not None for e in refused)
    assert {e.code() for e in refused} <= {
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
    }, refused
    # Read by assignment: a group's coordinator may be on a dead broker. Nothing of
    # the refused produce is visible, as the high watermark could not move.
    values = _read_all(cluster.address(survivor), "strict")
    _check_ledger(values, committed)
    assert values == sorted(committed)


def test_a_cut_off_leader_acknowledges_nothing_and_truncates_when_it_rejoins(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, config=REPLICATION, partitionable=True)
    try:
        cluster.start_all()
        follower = ready(cluster)
        create(cluster, follower, "cut", 1, 3, STRICT)
        wait_until(lambda: _state(cluster, follower, "cut")[1] == [1, 2, 3])
        before = _Ledger(cluster.address(follower), "cut").start()
        wait_until(lambda: before.acked_count() >= 200, timeout=60)
        before.stop()
        leader, _ = _state(cluster, follower, "cut")

        # Every link between the leader and the other brokers goes dark; clients still
        # reach it. It takes writes into its log but no follower copies them.
        cluster.isolate(leader)
        stranded: list[KafkaError | None] = []
        producer = Producer(
            {
                "bootstrap.servers": cluster.address(leader),
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": 6000,
            }
        )
        for i in range(20):
            producer.produce(
                "cut", f"stranded{i}".encode(), on_delivery=lambda e, _m: stranded.append(e)
            )
        producer.flush(30)
        assert len(stranded) == 20 and all(e is not None for e in stranded), stranded

        # The majority fences it and elects a leader from the ISR, which takes writes.
        others = [n for n in cluster.brokers if n != leader]
        wait_until(lambda: _state(cluster, others[0], "cut")[0] in others, timeout=30)
        after = _Ledger(cluster.address(others[0]), "cut", first=1_000_000).start()
        wait_until(lambda: after.acked_count() >= 200, timeout=60)
        after.stop()

        cluster.heal()
        wait_until(lambda: _state(cluster, others[0], "cut")[1] == [1, 2, 3], timeout=60)
        assert "truncating to" in cluster.log_of(leader), "the stranded tail was not cut"
        values = _read_all(cluster.address(others[0]), "cut")
        _check_ledger(values, before.acked + after.acked)
        assert len(values) == len(before.acked) + len(after.acked)
    finally:
        cluster.close()
