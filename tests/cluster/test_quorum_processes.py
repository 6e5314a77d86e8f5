"""The controller quorum across three real broker processes on loopback.

Election, re-election after SIGKILL and after SIGTERM (EndQuorumEpoch), and a
killed voter that comes back, reloads its log and catches up, all observed
over the wire with DescribeQuorum as kafka-metadata-quorum.sh asks it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kops.admin import QuorumStatus, describe_quorum
from kops.broker.runner import CLEAN_STOP_CODES, BrokerProcess
from kops.client import KopsClientError
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import TEST_CONFIG, free_port, wait_until

pytestmark = requires_bundled_broker


class Cluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.ports = {node: free_port() for node in range(1, size + 1)}
        self.voters = ",".join(f"{n}@127.0.0.1:{p}" for n, p in self.ports.items())
        self.brokers: dict[int, BrokerProcess] = {}
        self.log_files = [(root / f"node{n}.log").open("a") for n in self.ports]
        for (node, port), log in zip(self.ports.items(), self.log_files, strict=True):
            self.brokers[node] = BrokerProcess(
                root / f"node{node}",
                port=port,
                config={
                    **TEST_CONFIG,
                    "node.id": str(node),
                    "controller.quorum.voters": self.voters,
                },
                stderr=log.fileno(),
            )

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def live(self) -> list[int]:
        return [n for n, b in self.brokers.items() if b.process is not None and b.exited() is None]

    def leader(self) -> QuorumStatus | None:
        """The status from the one live node that answers as leader, if any."""
        for node in self.live():
            try:
                status = describe_quorum(self.address(node), timeout=2)
            except KopsClientError:
                continue
            if status.error is None and status.leader_id == node:
                return status
        return None

    def settled(self, min_epoch: int = 0) -> QuorumStatus | None:
        """A leader of at least `min_epoch` that every live voter follows, fully caught up."""
        status = self.leader()
        if status is None or status.leader_epoch < min_epoch:
            return None
        ends = {v.replica_id: v.log_end_offset for v in status.voters}
        if any(ends.get(n) != status.high_watermark for n in self.live()):
            return None
        for node in self.live():
            if node == status.leader_id:
                continue
            other = describe_quorum(self.address(node), timeout=2)
            if other.error != "not_leader_or_follower" or (
                other.leader_id,
                other.leader_epoch,
            ) != (status.leader_id, status.leader_epoch):
                return None
        return status

    def logs(self) -> str:
        return "\n".join(
            f"--- node {n}\n" + (self.root / f"node{n}.log").read_text()[-3000:]
            for n in self.brokers
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        for broker in cluster.brokers.values():
            broker.start()
        yield cluster
    finally:
        for broker in cluster.brokers.values():
            broker.kill()
        for log in cluster.log_files:
            log.close()


def _settle(cluster: Cluster, min_epoch: int = 0, timeout: float = 20) -> QuorumStatus:
    status = wait_until(lambda: cluster.settled(min_epoch), timeout, message=lambda: cluster.logs())
    assert isinstance(status, QuorumStatus)
    return status


def test_three_brokers_elect_one_leader_and_replicate_to_all(cluster: Cluster) -> None:
    status = _settle(cluster)
    assert status.leader_epoch >= 1
    # The leader's LeaderChange entry reached every voter: replication over Fetch.
    assert status.high_watermark >= 1
    assert sorted(v.replica_id for v in status.voters) == [1, 2, 3]
    assert {v.log_end_offset for v in status.voters} == {status.high_watermark}
    followers = [v for v in status.voters if v.replica_id != status.leader_id]
    assert all(v.last_fetch_timestamp > 0 for v in followers)
    assert abs(followers[0].last_fetch_timestamp - time.time() * 1000) < 60_000


def test_killed_leaders_are_replaced_and_rejoin_caught_up(cluster: Cluster) -> None:
    status = _settle(cluster)
    for _ in range(3):
        old = status.leader_id
        killed_at = time.monotonic()
        cluster.brokers[old].kill()
        status = _settle(cluster, min_epoch=status.leader_epoch + 1)
        failover = time.monotonic() - killed_at
        print(f"controller failover after SIGKILL: {failover:.2f}s (epoch {status.leader_epoch})")
        assert status.leader_id != old
        before = status.high_watermark
        # The killed voter reloads its log and quorum state, follows and catches up.
        cluster.brokers[old].start()
        status = _settle(cluster, min_epoch=status.leader_epoch)
        assert status.high_watermark >= before
        assert {v.log_end_offset for v in status.voters} == {status.high_watermark}


def test_sigterm_of_the_leader_hands_over(cluster: Cluster) -> None:
    status = _settle(cluster)
    old = status.leader_id
    assert cluster.brokers[old].stop() in CLEAN_STOP_CODES, cluster.logs()
    status = _settle(cluster, min_epoch=status.leader_epoch + 1)
    assert status.leader_id != old
    cluster.brokers[old].start()
    status = _settle(cluster, min_epoch=status.leader_epoch)
    assert {v.log_end_offset for v in status.voters} == {status.high_watermark}


def test_a_single_broker_has_no_quorum(kafka_broker: str) -> None:
    with pytest.raises(KopsClientError, match="no controller quorum"):
        describe_quorum(kafka_broker)
