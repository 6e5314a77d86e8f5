"""Three real broker processes on loopback, one controller quorum: the shared fixture's parts."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from kops.admin import QuorumStatus, describe_cluster_brokers, describe_quorum
from kops.broker.runner import BrokerProcess, BrokerStartError
from kops.client import KopsClientError
from kops.testing import TEST_CONFIG, FaultProxy, free_port, wait_until


class Cluster:
    """`size` broker processes, every one a voter, on free loopback ports.

    With ``partitionable`` every node reaches every other through its own
    FaultProxy (one per ordered pair), so a test can cut a node off from the
    rest (``isolate``) and mend it (``heal``); the nodes then share a cluster id
    written beforehand, as ``kafka-storage format`` would, because their voter
    lists (the addresses) differ.
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        config: Mapping[str, str] | None = None,
        *,
        partitionable: bool = False,
        metrics: bool = False,
    ) -> None:
        self.root = root
        self._size = size
        self._config = dict(config or {})
        self._partitionable = partitionable
        self._metrics = metrics
        self.log_files = [(root / f"node{n}.log").open("a") for n in range(1, size + 1)]
        self.proxies: dict[tuple[int, int], FaultProxy] = {}
        self.brokers: dict[int, BrokerProcess] = {}
        self._build()

    def _build(self) -> None:
        """Processes (not started) on fresh free ports, with fresh data directories."""
        for proxy in self.proxies.values():
            proxy.close()
        self.ports = {node: free_port() for node in range(1, self._size + 1)}
        self.proxies = {}
        if self._partitionable:
            self.proxies = {
                (a, b): FaultProxy(("127.0.0.1", self.ports[b]))
                for a in self.ports
                for b in self.ports
                if a != b
            }
        self.brokers = {}
        for (node, port), log in zip(self.ports.items(), self.log_files, strict=True):
            data_dir = self.root / f"node{node}"
            shutil.rmtree(data_dir, ignore_errors=True)
            if self._partitionable:
                data_dir.mkdir(parents=True)
                (data_dir / "meta.properties").write_text("cluster.id=kops-partition-test\n")
            self.brokers[node] = BrokerProcess(
                data_dir,
                port=port,
                config={
                    **TEST_CONFIG,
                    "node.id": str(node),
                    "controller.quorum.voters": self._voters_seen_by(node),
                    **self._config,
                },
                stderr=log.fileno(),
                metrics="127.0.0.1:0" if self._metrics else None,
            )

    def start_all(self, attempts: int = 3) -> None:
        """Start every broker. A port that another process took between free_port() and
        the broker's bind (two test workers on one machine) means new ports for all: the
        voter list names them."""
        for attempt in range(attempts):
            try:
                for broker in self.brokers.values():
                    broker.start()
                return
            except BrokerStartError:
                for broker in self.brokers.values():
                    broker.kill()
                if attempt == attempts - 1 or "address already in use" not in self.logs():
                    raise
                self._build()

    def _voters_seen_by(self, node: int) -> str:
        def port(peer: int) -> int:
            proxy = self.proxies.get((node, peer))
            return proxy.port if proxy is not None else self.ports[peer]

        return ",".join(f"{peer}@127.0.0.1:{port(peer)}" for peer in self.ports)

    def isolate(self, node: int) -> None:
        """Blackhole every link to and from `node` (the test still reaches it directly)."""
        for (a, b), proxy in self.proxies.items():
            if node in (a, b):
                proxy.blackhole()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def close(self) -> None:
        for broker in self.brokers.values():
            broker.kill()
        for proxy in self.proxies.values():
            proxy.close()
        for log in self.log_files:
            log.close()

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
    """Until every live broker's image shows exactly `expected` ({id: fenced})."""
    wait_until(
        lambda: all(cluster.brokers_seen_by(n) == expected for n in cluster.live()),
        timeout,
        message=lambda: f"brokers {expected}, seen {cluster.brokers_seen()}\n{cluster.logs()}",
    )
