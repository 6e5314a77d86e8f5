"""The controller quorum across three real broker processes on loopback.

Election, re-election after SIGKILL and after SIGTERM (EndQuorumEpoch), and a
killed voter that comes back, reloads its log and catches up, all observed
over the wire with DescribeQuorum as kafka-metadata-quorum.sh asks it.
"""

from __future__ import annotations

import time

import pytest

from kops.admin import describe_quorum
from kops.broker.runner import CLEAN_STOP_CODES
from kops.client import KopsClientError
from kops.pytest_plugin import requires_bundled_broker
from tests.cluster.processes import Cluster, settle

pytestmark = requires_bundled_broker


def test_three_brokers_elect_one_leader_and_replicate_to_all(cluster: Cluster) -> None:
    status = settle(cluster)
    assert status.leader_epoch >= 1
    # The leader's LeaderChange entry reached every voter: replication over Fetch.
    assert status.high_watermark >= 1
    assert sorted(v.replica_id for v in status.voters) == [1, 2, 3]
    assert {v.log_end_offset for v in status.voters} == {status.high_watermark}
    followers = [v for v in status.voters if v.replica_id != status.leader_id]
    assert all(v.last_fetch_timestamp > 0 for v in followers)
    assert abs(followers[0].last_fetch_timestamp - time.time() * 1000) < 60_000


def test_killed_leaders_are_replaced_and_rejoin_caught_up(cluster: Cluster) -> None:
    status = settle(cluster)
    for _ in range(3):
        old = status.leader_id
        killed_at = time.monotonic()
        cluster.brokers[old].kill()
        status = settle(cluster, min_epoch=status.leader_epoch + 1)
        failover = time.monotonic() - killed_at
        print(f"controller failover after SIGKILL: {failover:.2f}s (epoch {status.leader_epoch})")
        assert status.leader_id != old
        before = status.high_watermark
        # The killed voter reloads its log and quorum state, follows and catches up.
        cluster.brokers[old].start()
        status = settle(cluster, min_epoch=status.leader_epoch)
        assert status.high_watermark >= before
        assert {v.log_end_offset for v in status.voters} == {status.high_watermark}


def test_sigterm_of_the_leader_hands_over(cluster: Cluster) -> None:
    status = settle(cluster)
    old = status.leader_id
    assert cluster.brokers[old].stop() in CLEAN_STOP_CODES, cluster.logs()
    status = settle(cluster, min_epoch=status.leader_epoch + 1)
    assert status.leader_id != old
    cluster.brokers[old].start()
    status = settle(cluster, min_epoch=status.leader_epoch)
    assert {v.log_end_offset for v in status.voters} == {status.high_watermark}


def test_a_single_broker_has_no_quorum(kafka_broker: str) -> None:
    with pytest.raises(KopsClientError, match="no controller quorum"):
        describe_quorum(kafka_broker)
