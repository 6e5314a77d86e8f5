"""Broker membership across three real broker processes: register, heartbeat, fence.

Every broker registers with the active controller (the quorum leader) and
heartbeats; one that dies is fenced after broker.session.timeout.ms (3 s) and
drops out of Metadata; one that returns registers again and is unfenced once it
has caught up. A controller change restarts the session clocks, so it fences
nobody alive. Observed as a client would: DescribeCluster v2 (fenced brokers
included) and Metadata through confluent-kafka.
"""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient

from kops.broker.runner import CLEAN_STOP_CODES
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.processes import Cluster, settle, wait_brokers

pytestmark = requires_bundled_broker

ALL_ACTIVE = {1: False, 2: False, 3: False}


def _metadata_brokers(cluster: Cluster, node: int) -> tuple[list[int], int]:
    metadata = AdminClient({"bootstrap.servers": cluster.address(node)}).list_topics(timeout=10)
    return sorted(metadata.brokers), metadata.controller_id


def test_a_dead_broker_is_fenced_and_a_returning_one_unfenced(cluster: Cluster) -> None:
    status = settle(cluster)
    wait_brokers(cluster, ALL_ACTIVE)
    # The client may ask any broker, and each applies the metadata log at its own pace.
    wait_until(lambda: _metadata_brokers(cluster, 1) == ([1, 2, 3], status.leader_id))

    victim = next(n for n in cluster.brokers if n != status.leader_id)
    killed_at = time.monotonic()
    cluster.brokers[victim].kill()
    wait_brokers(cluster, {**ALL_ACTIVE, victim: True})
    print(f"broker fenced {time.monotonic() - killed_at:.2f}s after SIGKILL (session 3 s)")
    survivor = status.leader_id
    wait_until(
        lambda: _metadata_brokers(cluster, survivor)[0] == sorted(set(ALL_ACTIVE) - {victim})
    )

    cluster.brokers[victim].start()
    wait_brokers(cluster, ALL_ACTIVE)
    wait_until(lambda: _metadata_brokers(cluster, victim)[0] == [1, 2, 3])


def test_a_controller_change_fences_nobody_alive(cluster: Cluster) -> None:
    status = settle(cluster)
    wait_brokers(cluster, ALL_ACTIVE)
    old = status.leader_id
    cluster.brokers[old].kill()
    settle(cluster, min_epoch=status.leader_epoch + 1)
    survivors = set(ALL_ACTIVE) - {old}
    samples: list[dict[int, bool]] = []

    def old_fenced() -> bool:
        seen = cluster.brokers_seen()
        if seen is None:
            return False
        samples.append(seen)
        return seen.get(old) is True

    wait_until(old_fenced, 20, message=lambda: f"broker {old} fenced; seen {samples[-3:]}")
    assert all(not seen[n] for seen in samples for n in survivors if n in seen), samples
    wait_until(lambda: _metadata_brokers(cluster, min(survivors))[1] not in (old, -1))


def test_sigterm_is_a_controlled_shutdown(cluster: Cluster) -> None:
    status = settle(cluster)
    wait_brokers(cluster, ALL_ACTIVE)
    follower = next(n for n in cluster.brokers if n != status.leader_id)
    for victim in (follower, status.leader_id):
        assert cluster.brokers[victim].stop() in CLEAN_STOP_CODES
        # The controller fenced it before it exited (want_shut_down answered with
        # should_shut_down only once the fencing had committed), not a session later.
        assert f"broker {victim}: controlled shutdown done" in cluster.log_of(victim)
        wait_brokers(cluster, {**ALL_ACTIVE, victim: True})
        cluster.brokers[victim].start()
        settle(cluster)
        wait_brokers(cluster, ALL_ACTIVE)
