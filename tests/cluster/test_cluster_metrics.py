"""Cluster metrics under Kafka's JMX-exporter names, scraped from three real brokers.

What an operator's alerts key on: exactly one broker reports
ActiveControllerCount 1 (Kafka's "sum != 1" alert), every quorum member agrees
on raft-metrics' current leader, and the controller counts fenced brokers.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kops.pytest_plugin import requires_bundled_broker
from kops.testing import wait_until
from tests.cluster.processes import Cluster, settle, wait_brokers

pytestmark = requires_bundled_broker


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, metrics=True)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def _scrape(cluster: Cluster, node: int) -> dict[str, float]:
    url = cluster.brokers[node].metrics_url
    assert url is not None
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_one_active_controller_an_agreed_leader_and_fenced_counts(cluster: Cluster) -> None:
    status = settle(cluster)
    wait_brokers(cluster, {1: False, 2: False, 3: False})
    scraped = {node: _scrape(cluster, node) for node in cluster.live()}
    active = {
        n: m["kafka_controller_kafkacontroller_activecontrollercount"] for n, m in scraped.items()
    }
    assert active == {n: float(n == status.leader_id) for n in scraped}
    assert {m["kafka_server_raft_metrics_current_leader"] for m in scraped.values()} == {
        float(status.leader_id)
    }
    assert {m["kafka_server_raft_metrics_current_epoch"] for m in scraped.values()} == {
        float(status.leader_epoch)
    }
    leader = scraped[status.leader_id]
    assert leader["kafka_controller_kafkacontroller_activebrokercount"] == 3
    assert leader["kafka_controller_kafkacontroller_fencedbrokercount"] == 0
    assert (
        "kafka_controller_kafkacontroller_fencedbrokercount"
        not in scraped[next(n for n in scraped if n != status.leader_id)]
    )

    victim = next(n for n in cluster.brokers if n != status.leader_id)
    cluster.brokers[victim].kill()
    wait_until(
        lambda: (
            _scrape(cluster, status.leader_id)["kafka_controller_kafkacontroller_fencedbrokercount"]
            == 1
        ),
        20,
    )
    assert (
        _scrape(cluster, status.leader_id)["kafka_controller_kafkacontroller_activebrokercount"]
        == 2
    )
