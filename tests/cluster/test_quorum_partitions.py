"""Network partitions between three real broker processes, through fault proxies.

Every node reaches every other through its own FaultProxy, so one node can be
cut off while the test still talks to all of them directly. Blackholed links
hold their bytes: on healing they arrive late, a stale request after the world
moved on, which the nodes must refuse by epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kops.admin import QuorumStatus, describe_quorum
from kops.client import KopsClientError
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.processes import Cluster, settle, wait_brokers

pytestmark = requires_bundled_broker

ALL_ACTIVE = {1: False, 2: False, 3: False}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, partitionable=True)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def _answer(cluster: Cluster, node: int) -> QuorumStatus | None:
    try:
        return describe_quorum(cluster.address(node), timeout=2)
    except KopsClientError:
        return None


def test_an_isolated_leader_is_replaced_then_follows(net: Cluster) -> None:
    status = settle(net)
    wait_brokers(net, ALL_ACTIVE)
    old = status.leader_id
    others = [n for n in net.brokers if n != old]
    net.isolate(old)

    def new_leader() -> QuorumStatus | None:
        for node in others:
            answer = _answer(net, node)
            if answer and answer.error is None and answer.leader_epoch > status.leader_epoch:
                return answer
        return None

    elected = wait_until(new_leader, 20, message=net.logs)
    assert isinstance(elected, QuorumStatus) and elected.leader_id in others
    # Cut off from a majority, the old leader stops leading (check-quorum) ...
    wait_until(lambda: (a := _answer(net, old)) is not None and a.error is not None, 20,
               message=net.logs)  # fmt: skip
    # ... and the new controller fences the broker it no longer hears from.
    wait_until(
        lambda: net.brokers_seen_by(elected.leader_id) == {**ALL_ACTIVE, old: True},
        20,
        message=net.logs,
    )
    net.heal()
    final = settle(net, min_epoch=elected.leader_epoch)
    assert {v.log_end_offset for v in final.voters} == {final.high_watermark}
    wait_brokers(net, ALL_ACTIVE)


def test_an_isolated_follower_does_not_stop_the_majority(net: Cluster) -> None:
    status = settle(net)
    wait_brokers(net, ALL_ACTIVE)
    follower = next(n for n in net.brokers if n != status.leader_id)
    net.isolate(follower)
    # The majority keeps committing: the controller fences the silent broker ...
    wait_until(
        lambda: net.brokers_seen_by(status.leader_id) == {**ALL_ACTIVE, follower: True},
        20,
        message=net.logs,
    )
    # ... under the same leader and epoch (the cut-off node cannot disturb it).
    still = _answer(net, status.leader_id)
    assert still is not None and (still.error, still.leader_epoch) == (None, status.leader_epoch)
    net.heal()
    # Its higher candidate epoch may force one election (there is no pre-vote yet); the
    # cluster then settles with everyone caught up and every broker active again.
    final = settle(net, min_epoch=status.leader_epoch)
    assert {v.log_end_offset for v in final.voters} == {final.high_watermark}
    wait_brokers(net, ALL_ACTIVE)
