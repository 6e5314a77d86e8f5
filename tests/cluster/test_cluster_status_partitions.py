"""`kops cluster status` names the partitions at risk: a short ISR, or no leader at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.clients import create, ready
from tests.cluster.processes import Cluster

pytestmark = requires_bundled_broker


def _kops(bootstrap: str, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kops", *args, "--bootstrap", bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"},
    )
    return proc.returncode, proc.stdout


def _status(bootstrap: str, *args: str) -> tuple[int, str]:
    return _kops(bootstrap, "cluster", "status", *args)


def _epochs(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (leader, leader epoch) from `kops topic describe --json`."""
    code, out = _kops(bootstrap, "topic", "describe", topic, "--json")
    assert code == 0
    return {p["partition"]: (p["leader"], p["leader_epoch"]) for p in json.loads(out)["partitions"]}


def test_status_lists_under_replicated_and_offline_partitions(cluster: Cluster) -> None:
    follower = ready(cluster)
    create(cluster, follower, "safe", 2, 3)
    create(cluster, follower, "single", 3, 1)
    bootstrap = ",".join(cluster.address(n) for n in cluster.brokers)

    def view() -> dict[str, object]:
        code, out = _status(bootstrap, "--json")
        assert code == 0
        return json.loads(out)

    wait_until(lambda: view()["partitions_at_risk"] == [], timeout=30)
    code, out = _status(bootstrap)
    assert code == 0 and "have a leader and a full ISR" in out

    victim = next(n for n in cluster.brokers if n != follower)
    before = _epochs(bootstrap, "safe")
    assert {epoch for _, epoch in before.values()} == {0}
    cluster.brokers[victim].kill()
    survivors = ",".join(cluster.address(n) for n in cluster.brokers if n != victim)

    def at_risk() -> list[dict[str, object]] | None:
        code, out = _status(survivors, "--json")
        if code != 0:
            return None
        risky = json.loads(out)["partitions_at_risk"]
        names = {p["topic"] for p in risky}
        return risky if {"safe", "single"} <= names else None

    risky = wait_until(at_risk, timeout=30)
    assert isinstance(risky, list)
    safe = [p for p in risky if p["topic"] == "safe"]
    assert len(safe) == 2 and all(victim not in p["isr"] and p["leader"] >= 0 for p in safe)
    # Replication factor 1 on the dead broker: no replica can lead.
    offline = [p for p in risky if p["topic"] == "single"]
    assert offline and all(p["leader"] == -1 and p["replicas"] == [victim] for p in offline)
    code, out = _status(survivors)
    assert code == 0 and "under-replicated" in out and "offline" in out
    # A leadership that moved started a new leader epoch.
    after = _epochs(survivors, "safe")
    for p, (leader, _) in before.items():
        assert after[p] == ((leader, 0) if leader != victim else (after[p][0], 1))
        assert after[p][0] != victim
