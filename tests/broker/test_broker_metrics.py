"""The broker's Prometheus metrics: scraped over HTTP, parsed with prometheus-client's
parser, and moved by real traffic from real clients."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from kops.broker.metrics import api_name
from kops.broker.runner import BrokerProcess
from kops.testing import TEST_CONFIG, BrokerAddress, run_broker, wait_until
from tests.broker.clients import create_topic, produce

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_name(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerAddress]:
    with run_broker(tmp_path, metrics=("127.0.0.1", 0)) as address:
        yield address


def test_api_names_are_kafkas() -> None:
    assert api_name(0) == "Produce"
    assert api_name(2) == "ListOffsets"
    assert api_name(18) == "ApiVersions"
    assert api_name(23) == "OffsetForLeaderEpoch"


def test_metrics_move_with_traffic(broker: BrokerAddress, topic_name: str) -> None:
    url = broker.metrics_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    before = scrape(url)
    assert (
        value(before, "kafka_server_brokertopicmetrics_messagesin_total", topic=topic_name) is None
    )
    rebalances_before = value(
        before, "kafka_coordinator_group_groupmetadatamanager_rebalances_total"
    )
    assert rebalances_before is not None

    create_topic(broker, topic_name, partitions=2)
    n = 250
    records = [(f"k{i}".encode(), b"v" * (i % 50 + 1), None, i % 2) for i in range(n)]
    assert len(produce(broker, topic_name, records)) == n

    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"g-{topic_name}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.subscribe([topic_name])
    consumed = 0
    try:

        def read_all() -> bool:
            nonlocal consumed
            for msg in consumer.consume(num_messages=n, timeout=0.2):
                assert msg.error() is None, msg.error()
                consumed += 1
            return consumed >= n

        wait_until(read_all, timeout=30, message="every record consumed")
    finally:
        consumer.close()

    assert consumed == n
    after = scrape(url)
    assert value(after, "kafka_server_brokertopicmetrics_messagesin_total", topic=topic_name) == n
    bytes_in = value(after, "kafka_server_brokertopicmetrics_bytesin_total", topic=topic_name)
    bytes_out = value(after, "kafka_server_brokertopicmetrics_bytesout_total", topic=topic_name)
    assert bytes_in is not None and bytes_in > 0
    # Every stored batch was sent at least once to read all n records.
    assert bytes_out is not None and bytes_out >= bytes_in
    sizes = {
        dict(labels)["partition"]: v
        for labels, v in by_name(after, "kafka_log_log_size").items()
        if dict(labels)["topic"] == topic_name
    }
    assert set(sizes) == {"0", "1"} and all(size > 0 for size in sizes.values())
    # Batches are stored as produced: what came in is what is on disk.
    assert sum(sizes.values()) == bytes_in

    for api in ("Produce", "Fetch", "Metadata", "JoinGroup", "SyncGroup"):
        requests = value(after, "kafka_network_requestmetrics_requests_total", request=api)
        assert requests is not None and requests > 0, api
    latency_count = value(
        after, "kafka_network_requestmetrics_totaltimems_count", request="Produce"
    )
    assert latency_count is not None and latency_count > 0
    assert (
        value(
            after, "kafka_network_requestmetrics_totaltimems_bucket", request="Produce", le="+Inf"
        )
        == latency_count
    )
    latency_sum = value(after, "kafka_network_requestmetrics_totaltimems_sum", request="Produce")
    assert latency_sum is not None and latency_sum > 0

    rebalances = value(after, "kafka_coordinator_group_groupmetadatamanager_rebalances_total")
    assert rebalances is not None and rebalances > rebalances_before
    groups = value(after, "kafka_coordinator_group_groupmetadatamanager_numgroups")
    assert groups is not None and groups >= 1

    assert value(after, "kafka_server_replicamanager_underreplicatedpartitions") == 0
    assert value(after, "kafka_controller_kafkacontroller_offlinepartitionscount") == 0
    assert value(after, "kafka_controller_kafkacontroller_activecontrollercount") == 1
    assert value(after, "kafka_server_replicamanager_isrshrinks_total") == 0
    assert value(after, "kafka_server_replicamanager_isrexpands_total") == 0
    purgatory = by_name(after, "kafka_server_delayedoperationpurgatory_purgatorysize")
    assert {dict(labels)["delayedoperation"] for labels in purgatory} >= {"Produce", "Fetch"}


def test_a_parked_fetch_shows_in_the_purgatory(broker: BrokerAddress, topic_name: str) -> None:
    create_topic(broker, topic_name)
    url = broker.metrics_url
    assert url is not None
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"g-{topic_name}",
            "auto.offset.reset": "latest",
            # Long polls on an empty topic: the fetch waits in the purgatory.
            "fetch.wait.max.ms": 5000,
        }
    )
    consumer.subscribe([topic_name])

    def parked() -> bool:
        consumer.poll(0.1)
        size = value(
            scrape(url),
            "kafka_server_delayedoperationpurgatory_purgatorysize",
            delayedoperation="Fetch",
        )
        return size is not None and size >= 1

    try:
        wait_until(parked, timeout=30, message="a fetch parked in the purgatory")
    finally:
        consumer.close()


def test_the_metrics_port_is_freed_when_the_broker_stops(tmp_path: Path) -> None:
    with run_broker(tmp_path, metrics=("127.0.0.1", 0)) as address:
        assert address.metrics_url is not None
        port = int(address.metrics_url.rsplit(":", 1)[1].split("/")[0])
        assert scrape(address.metrics_url)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


def test_no_metrics_unless_asked(tmp_path: Path) -> None:
    with run_broker(tmp_path) as address:
        assert address.metrics_url is None


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process `pid` listens on (Linux: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().as_posix()
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


@needs_proc
def test_broker_start_with_metrics_serves_them(tmp_path: Path) -> None:
    process = BrokerProcess(tmp_path, config=TEST_CONFIG, metrics="127.0.0.1:0")
    bootstrap = process.start()
    try:
        assert "--metrics" in process.command()
        url = process.metrics_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        metrics_port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert metrics_port != 0 and process.metrics == f"127.0.0.1:{metrics_port}"
        create_topic(bootstrap, "served")
        assert len(produce(bootstrap, "served", [(None, b"x")] * 3)) == 3
        samples = scrape(url)
        assert (
            value(samples, "kafka_server_brokertopicmetrics_messagesin_total", topic="served") == 3
        )
        assert process.process is not None
        assert _listening_ports(process.process.pid) == {process.port, metrics_port}
    finally:
        assert process.stop() == 143


@needs_proc
def test_broker_start_without_metrics_listens_only_for_clients(tmp_path: Path) -> None:
    process = BrokerProcess(tmp_path, config=TEST_CONFIG)
    process.start()
    try:
        assert "--metrics" not in process.command()
        assert process.metrics_url is None
        assert process.process is not None
        wait_until(lambda: process.port in _listening_ports(process.process.pid))
        assert _listening_ports(process.process.pid) == {process.port}
    finally:
        assert process.stop() == 143
    assert process.process.stdout is not None
    assert "metrics on" not in process.process.stdout.read()


def test_metrics_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = BrokerProcess(tmp_path, metrics=f"127.0.0.1:{port}").command()
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "listening on" not in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    )
