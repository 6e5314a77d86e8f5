"""A broker as a member of a cluster: its quorum vote, metadata image and membership.

Composes the three parts a broker started with ``controller.quorum.voters``
runs beside its client-facing work: the QuorumDriver (Raft over the listener),
ClusterControl (the metadata image, and the controller while this broker leads
the quorum) and BrokerLifecycle (registration and heartbeats). Imported only
by such brokers: a single broker never loads the Raft stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kops.broker.cluster.control import ClusterControl
from kops.broker.cluster.controller import ControllerConfig
from kops.broker.cluster.lifecycle import BrokerLifecycle
from kops.broker.cluster.quorum import QuorumDriver
from kops.broker.config import BrokerConfig

__all__ = ["ClusterMember"]


class ClusterMember:
    def __init__(
        self,
        node_id: int,
        voters: Mapping[int, tuple[str, int]],
        directory: Path,
        cluster_id: str,
        config: BrokerConfig,
        advertised: tuple[str, int],
    ) -> None:
        self.voters = dict(voters)
        self.quorum = QuorumDriver(
            node_id,
            voters,
            directory,
            cluster_id,
            config={
                "election_timeout_ms": config.int("controller.quorum.election.timeout.ms"),
                "fetch_timeout_ms": config.int("controller.quorum.fetch.timeout.ms"),
                "election_backoff_max_ms": config.int("controller.quorum.election.backoff.max.ms"),
            },
        )
        self.control = ClusterControl(
            self.quorum,
            ControllerConfig(
                session_timeout_ms=config.int("broker.session.timeout.ms"),
                # Two heartbeats missed after a closed connection: the broker is gone.
                connection_grace_ms=2 * config.int("broker.heartbeat.interval.ms"),
            ),
            snapshot_bytes=config.int("metadata.log.max.record.bytes.between.snapshots"),
            rebalance_interval_ms=(
                config.int("leader.imbalance.check.interval.seconds") * 1000
                if config.bool("auto.leader.rebalance.enable")
                else None
            ),
        )
        self.lifecycle = BrokerLifecycle(
            node_id,
            advertised,
            voters,
            self.quorum,
            heartbeat_interval_ms=config.int("broker.heartbeat.interval.ms"),
        )

    async def start(self) -> None:
        await self.quorum.start()
        self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()
        await self.control.stop()
        await self.quorum.stop()
