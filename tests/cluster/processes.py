"""Three real broker processes on loopback, one controller quorum: the shared fixture's parts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kops.admin import QuorumStatus, describe_cluster_brokers, describe_quorum
from kops.broker.runner import BrokerProcess
from kops.client import KopsClientError
from kops.testing import TEST_CONFIG, free_port, wait_until


class Cluster:
    def __init__(self, root: Path, size: int = 3, config: Mapping[str, str] | None = None) -> None:
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
                    **(config or {}),
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

    def brokers_seen(self) -> dict[int, bool] | None:
        """{broker id: fenced} as the first live broker's metadata image has them."""
        for node in self.live():
            seen = self.brokers_seen_by(node)
            if seen is not None:
                return seen
        return None

    def brokers_seen_by(self, node: int) -> dict[int, bool] | None:
        try:
            _, brokers = describe_cluster_brokers(self.address(node), timeout=2)
        except KopsClientError:
            return None
        return {b.node_id: b.fenced for b in brokers}

    def log_of(self, node: int) -> str:
        return (self.root / f"node{node}.log").read_text()

    def logs(self) -> str:
        return "\n".join(
            f"--- node {n}\n" + (self.root / f"node{n}.log").read_text()[-3000:]
            for n in self.brokers
        )


def settle(cluster: Cluster, min_epoch: int = 0, timeout: float = 20) -> QuorumStatus:
    status = wait_until(lambda: cluster.settled(min_epoch), timeout, message=lambda: cluster.logs())
    assert isinstance(status, QuorumStatus)
    return status


def wait_brokers(cluster: Cluster, expected: dict[int, bool], timeout: float = 20) -> None:
    """Until the live brokers' image shows exactly `expected` ({id: fenced})."""
    wait_until(
        lambda: cluster.brokers_seen() == expected,
        timeout,
        message=lambda: f"brokers {expected}, seen {cluster.brokers_seen()}\n{cluster.logs()}",
    )
