"""Failovers that clients ride through: the controller's death, the group coordinator's death.

Three real broker processes; SIGKILL, no clean shutdown. A new controller is
elected within seconds and takes topic changes and leader moves on; a consumer
group keeps consuming through the death of its coordinator's broker, from the
offsets it committed (they were in the `__consumer_offsets` ISR before the
commit was answered).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from kio.schema.find_coordinator import v2 as find_coordinator_v2
from kio.static.primitive import i8

from kops.protocol.client import send_request
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.clients import create, leaders_seen_by, partitions_seen_by, produce, ready
from tests.cluster.processes import Cluster, settle

pytestmark = requires_bundled_broker


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    cluster = Cluster(
        tmp_path,
        config={"replica.lag.time.max.ms": "2000", "leader.imbalance.check.interval.seconds": "1"},
    )
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def test_a_new_controller_takes_topic_changes_and_moves_leaders(cluster: Cluster) -> None:
    status = settle(cluster)
    ready(cluster)
    survivor = next(n for n in cluster.brokers if n != status.leader_id)
    create(cluster, survivor, "before", 3, 3)
    led_by_old = [
        p
        for p, leader in (leaders_seen_by(cluster, survivor, "before") or {}).items()
        if leader == status.leader_id
    ]

    killed = time.monotonic()
    cluster.brokers[status.leader_id].kill()
    new = settle(cluster, min_epoch=status.leader_epoch + 1)
    elected = time.monotonic() - killed
    print(f"controller elected {elected:.2f} s after SIGKILL")
    assert new.leader_id != status.leader_id
    assert elected < 10

    # The dead controller's leaderships moved to live ISR replicas.
    def moved() -> bool:
        leaders = leaders_seen_by(cluster, survivor, "before") or {}
        return all(leaders.get(p) not in (-1, status.leader_id) for p in led_by_old)

    wait_until(moved, timeout=20)
    create(cluster, survivor, "after", 2, 2)
    leaders = leaders_seen_by(cluster, survivor, "after")
    assert leaders is not None and status.leader_id not in leaders.values()


def _coordinator(cluster: Cluster, node: int, group: str) -> int:
    host, port = cluster.address(node).rsplit(":", 1)
    response = send_request(
        host,
        int(port),
        find_coordinator_v2.FindCoordinatorRequest(key=group, key_type=i8(0)),
    )
    return int(response.node_id) if response.error_code == 0 else -1


def test_a_group_keeps_its_offsets_through_its_coordinators_death(cluster: Cluster) -> None:
    follower = ready(cluster)
    create(cluster, follower, "work", 3, 3, {"min.insync.replicas": "2"})
    bootstrap = ",".join(cluster.address(n) for n in cluster.brokers)
    first = produce(bootstrap, "work", 300, prefix="a")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "workers",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    seen: list[str] = []

    def consume(expected: int) -> bool:
        batch = [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
        seen.extend(m.value().decode() for m in batch)
        if batch:  # nothing new to commit would be _NO_OFFSET
            consumer.commit(asynchronous=False)
        return len(set(seen)) >= expected

    try:
        consumer.subscribe(["work"])
        wait_until(lambda: consume(len(first)), timeout=60)
        committed_before = consumer.committed(
            [TopicPartition("work", p) for p in range(3)], timeout=30
        )
        wait_until(lambda: _coordinator(cluster, follower, "workers") > 0, timeout=30)
        victim = _coordinator(cluster, follower, "workers")
        cluster.brokers[victim].kill()
        survivor = next(n for n in cluster.brokers if n != victim)
        second = produce(
            ",".join(cluster.address(n) for n in cluster.brokers if n != victim),
            "work",
            300,
            prefix="b",
        )
        wait_until(lambda: consume(len(first) + len(second)), timeout=90)
        assert _coordinator(cluster, survivor, "workers") not in (-1, victim)
    finally:
        consumer.close()

    assert set(seen) == set(first) | set(second)
    # Nothing before the kill was read twice: the group resumed from its commits.
    assert sorted(v for v in seen if v.startswith("a")) == sorted(first)
    fresh = Consumer({"bootstrap.servers": cluster.address(survivor), "group.id": "workers"})
    try:
        after = fresh.committed([TopicPartition("work", p) for p in range(3)], timeout=30)
    finally:
        fresh.close()
    assert sum(tp.offset for tp in after) == len(first) + len(second)
    assert all(a.offset >= b.offset for a, b in zip(after, committed_before, strict=True))


def test_leadership_returns_to_the_preferred_replica_once_it_caught_up(cluster: Cluster) -> None:
    follower = ready(cluster)
    create(cluster, follower, "home", 3, 3)
    preferred = {
        index: p.replica_nodes[0]
        for index, p in (partitions_seen_by(cluster, follower, "home") or {}).items()
    }
    assert sorted(preferred.values()) == [1, 2, 3]  # one preferred leader per broker
    victim = next(n for n in cluster.brokers if n != follower)
    home = next(index for index, broker in preferred.items() if broker == victim)
    produce(cluster.address(follower), "home", 200)

    cluster.brokers[victim].kill()
    wait_until(
        lambda: (leaders_seen_by(cluster, follower, "home") or {}).get(home) not in (victim, -1),
        timeout=20,
    )
    produce(cluster.address(follower), "home", 200, prefix="while-down")  # it must catch up
    cluster.brokers[victim].start()

    def back() -> bool:
        partitions = partitions_seen_by(cluster, follower, "home") or {}
        p = partitions.get(home)
        return p is not None and p.leader_id == victim and p.leader_epoch >= 2

    # Back in the ISR, then leader again: a new leader epoch each time it moved.
    wait_until(back, timeout=60)
    assert leaders_seen_by(cluster, follower, "home") == preferred
