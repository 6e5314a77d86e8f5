"""``kops top``: --once --json against a broker, worker lateness from a metrics page, and a
live view that stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from kops import admin
from kops.client import ClientSettings
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.testing import wait_until

Kops = Callable[..., subprocess.CompletedProcess[str]]
SIGTERM_EXIT = 128 + signal.SIGTERM  # what every long-running command exits with


def _produce(bootstrap: str, topic: str, n: int) -> None:
    failed: list[object] = []
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, f"v{i}".encode(), on_delivery=lambda err, _m: err and failed.append(err))
    assert p.flush(30) == 0
    assert failed == []


def _setup(bootstrap: str) -> dict[str, str]:
    """A topic with 10 records, a group committed at 4, one delayed record, one dead letter."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "topic": f"topcli-{tag}",
        "group": f"topcli-g-{tag}",
        "dlq": f"topcli-{tag}.dlq",
        "template": f"topcli-{tag}.delay.{{tier}}",
    }
    admin.create_topic(bootstrap, names["topic"], 1)
    admin.create_topic(bootstrap, names["dlq"], 1)
    _produce(bootstrap, names["topic"], 10)
    _produce(bootstrap, names["dlq"], 1)
    c = Consumer(ClientSettings(bootstrap).consumer_config(names["group"]))
    c.commit(offsets=[TopicPartition(names["topic"], 0, 4)], asynchronous=False)
    c.close()
    tiers = DelayTiers.parse("1m", template=names["template"])
    ensure_tier_topics(bootstrap, tiers, cancel_topic=None, stats_topic=None)
    acks: list[object] = []
    p = Producer({"bootstrap.servers": bootstrap})
    send_delayed(
        p, names["topic"], b"x", delay=50, tiers=tiers, on_delivery=lambda e, _m: acks.append(e)
    )
    assert p.flush(30) == 0 and acks == [None]
    return names


def test_once_json(kops: Kops, kafka_broker: str) -> None:
    n = _setup(kafka_broker)
    r = kops(
        "top", "--once", "--json", "--interval", "0.5s", "--tiers", "1m",
        "--template", n["template"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {
        "brokers",
        "controller_id",
        "topics",
        "groups",
        "delay_tiers",
        "dlqs",
        "workers",
    } <= set(doc)
    assert doc["elapsed"] >= 0.5
    assert doc["controller_id"] in {b["id"] for b in doc["brokers"]}
    topic = {t["topic"]: t for t in doc["topics"]}[n["topic"]]
    assert topic["end_offset"] == 10 and topic["rate"] == 0.0  # two snapshots: a rate
    group = {g["group"]: g for g in doc["groups"]}[n["group"]]
    assert group["total_lag"] == 6 and group["status"] == "STOPPED"
    (tier,) = doc["delay_tiers"]
    assert tier["tier"] == "1m" and tier["backlog"] == 1
    dlq = {d["topic"]: d for d in doc["dlqs"]}[n["dlq"]]
    assert dlq["records"] == 1 and dlq["growth"] == 0
    assert doc["workers"] == []


def test_once_people_view_and_single_snapshot(kops: Kops, kafka_broker: str) -> None:
    n = _setup(kafka_broker)
    r = kops("top", "--once", "--interval", "0", "--tiers", "1m", "--template", n["template"])
    assert r.returncode == 0, r.stderr
    for title in ("brokers", "groups", "delay tiers", "dead-letter topics", "topics"):
        assert f"\n{title}" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith(n["group"]))
    assert line.split()[3] == "6"  # GROUP STATE MEMBERS LAG


@pytest.fixture
def worker_metrics() -> Iterator[str]:
    """A worker's metrics page: the 1m tier's lateness histogram with 10 observations."""
    registry = CollectorRegistry()
    lateness = Histogram(
        "kops_delay_lateness_seconds", "lateness", ["tier"], buckets=(0.1, 0.5, 1.0),
        registry=registry,
    )  # fmt: skip
    # 2 under 0.1 s, 6 in (0.1, 0.5], 1 in (0.5, 1], 1 above: p50 = 0.3 s, p99 = 1 s.
    for value in (0.05, 0.05, 0.2, 0.3, 0.3, 0.3, 0.4, 0.45, 0.7, 2.0):
        lateness.labels(tier="1m").observe(value)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_worker_metrics_show_lateness(kops: Kops, kafka_broker: str, worker_metrics: str) -> None:
    n = _setup(kafka_broker)
    args = ("top", "--once", "--interval", "0", "--tiers", "1m", "--template", n["template"])
    r = kops(*args, "--json", "--worker-metrics", worker_metrics)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["workers"] == [
        {"url": f"http://{worker_metrics}/metrics", "ok": True, "error": None}
    ]
    (tier,) = doc["delay_tiers"]
    assert tier["lateness_p50_ms"] == pytest.approx(300.0)
    assert tier["lateness_p99_ms"] == pytest.approx(1000.0)
    assert tier["delivered"] == 10
    people = kops(*args, "-w", worker_metrics)
    assert people.returncode == 0, people.stderr
    row = next(x for x in people.stdout.splitlines() if x.startswith("1m "))
    assert "300.0" in row and "1,000.0" in row


def test_unreachable_broker_one_line_error(run_kops: Kops) -> None:
    r = run_kops("top", "--once", bootstrap="127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_live_view_stops_cleanly_on_sigterm(kafka_broker: str) -> None:
    # TTY_COMPATIBLE makes rich draw the live view on the pipe, so the test sees it refresh.
    env = {k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"}
    env.update({"KOPS_BOOTSTRAP": kafka_broker, "TTY_COMPATIBLE": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "top", "--interval", "0.3s", "--tiers", "1m"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: out.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # Two draws of the view: the live loop is running, not just the first snapshot.
        wait_until(
            lambda: proc.poll() is not None or "".join(out).count("kops top ") >= 2,
            timeout=60,
            message="two refreshes of the live view",
        )
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    err = proc.stderr.read()
    assert code == SIGTERM_EXIT, err
    assert "Traceback" not in err
    assert "brokers" in "".join(out)
