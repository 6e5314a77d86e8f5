"""Metadata snapshots: a restart loads one instead of replaying the log, and a voter
that fell behind the leader's log start is sent one (FetchSnapshot).

``metadata.log.max.record.bytes.between.snapshots=1`` snapshots after every
metadata entry, so the entries before each snapshot are deleted: what a broker
knows after a restart can only have come from a snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path

from kops.admin import describe_quorum
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.processes import Cluster, settle, wait_brokers

pytestmark = requires_bundled_broker

EVERY_ENTRY = {"metadata.log.max.record.bytes.between.snapshots": "1"}


def _epochs(cluster: Cluster, node: int) -> list[int]:
    """The broker epochs `node` was given, in order, from its log."""
    return [
        int(e) for e in re.findall(r"broker \d+ registered \(epoch (\d+)\)", cluster.log_of(node))
    ]


def _snapshots(cluster: Cluster, node: int) -> list[Path]:
    return sorted((cluster.root / f"node{node}" / "__cluster_metadata-0").glob("*.checkpoint"))


def test_a_restarted_broker_loads_its_snapshot(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=1, config=EVERY_ENTRY)
    broker = cluster.brokers[1]
    try:
        for restart in range(1, 4):
            broker.start()
            settle(cluster)
            wait_brokers(cluster, {1: False})
            # Epochs keep rising across restarts: the earlier registrations are known,
            # and their log entries are gone, so they came from the snapshot.
            wait_until(lambda n=restart: len(_epochs(cluster, 1)) == n, message=cluster.logs)
            epochs = _epochs(cluster, 1)
            assert epochs == sorted(set(epochs)), epochs
            assert _snapshots(cluster, 1), "no snapshot written"
            if restart % 2:
                broker.kill()
            else:
                broker.stop()
        assert len(_snapshots(cluster, 1)) == 1, "older snapshots are deleted"
    finally:
        cluster.close()


def test_a_voter_behind_the_log_start_is_sent_the_snapshot(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=3, config=EVERY_ENTRY)
    try:
        cluster.start_all()
        status = settle(cluster)
        wait_brokers(cluster, {1: False, 2: False, 3: False})
        behind = next(n for n in cluster.brokers if n != status.leader_id)
        cluster.brokers[behind].kill()
        wait_brokers(cluster, {1: False, 2: False, 3: False, behind: True})
        # More metadata while it is away: another broker's restart registers it again.
        other = next(n for n in cluster.brokers if n not in (behind, status.leader_id))
        cluster.brokers[other].kill()
        cluster.brokers[other].start()
        wait_brokers(cluster, {1: False, 2: False, 3: False, behind: True})
        leader_log_start = min(
            int(p.name.split("-")[0]) for p in _snapshots(cluster, status.leader_id)
        )
        assert leader_log_start > 0

        cluster.brokers[behind].start()
        wait_brokers(cluster, {1: False, 2: False, 3: False})
        assert "installed the leader's snapshot" in cluster.log_of(behind)
        final = settle(cluster)
        assert {v.log_end_offset for v in final.voters} == {final.high_watermark}
        # Its own image (DescribeCluster answered by it) matches the leader's.
        assert describe_quorum(cluster.address(behind)).leader_id == final.leader_id
        wait_until(
            lambda: cluster.brokers_seen_by(behind) == cluster.brokers_seen_by(final.leader_id)
        )
    finally:
        cluster.close()
