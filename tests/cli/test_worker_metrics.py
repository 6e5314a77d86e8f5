"""``kops worker run --metrics``: a real worker serves Prometheus metrics that move with
real traffic, then stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from kops import admin
from kops.client import AdminSession
from kops.recipes.delay import DelayTiers, send_delayed
from kops.recipes.offsets import alter_group_offsets
from kops.testing import wait_until


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value, parsed by prometheus-client."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_worker_run_serves_metrics_that_move(kafka_broker: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    template = f"wm{tag}.{{tier}}"
    target, watched = f"wm-target-{tag}", f"wm-watched-{tag}"
    admin.create_topic(kafka_broker, target, 1)
    admin.create_topic(kafka_broker, watched, 1)
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
    for i in range(10):
        producer.produce(watched, f"v{i}".encode(), partition=0)
    assert producer.flush(10) == 0
    with AdminSession(kafka_broker) as session:
        alter_group_offsets(session, f"billing-{tag}", {(watched, 0): 4})
    file = tmp_path / "delay.toml"
    file.write_text(
        f"""
        [metrics]
        lag_groups = ["billing-{tag}"]
        lag_interval = "1s"

        [[job]]
        kind = "delay-forwarders"
        tiers = ["1s", "2s"]
        template = "{template}"
        group = "wm-{tag}"
        cancel_topic = ""
        stats_topic = ""
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "worker", "run", str(file), "--metrics", "127.0.0.1:0"],
        env={**os.environ, "KOPS_BOOTSTRAP": kafka_broker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    threads = [
        threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),  # type: ignore[arg-type]
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for t in threads:
        t.start()
    try:
        found = wait_until(
            lambda: re.search(r"metrics on (http://127\.0\.0\.1:(\d+)/metrics)", "".join(out)),
            30,
            message=lambda: "the metrics URL:\n" + "".join(out + err),
        )
        url = found.group(1)  # type: ignore[attr-defined]
        assert found.group(2) != "0"  # type: ignore[attr-defined]  # the port really bound
        wait_until(lambda: "delay forwarders running" in "".join(err), 30)

        lag = (
            "kafka_consumergroup_group_lag",
            (("group", f"billing-{tag}"), ("partition", "0"), ("topic", watched)),
        )
        wait_until(lambda: scrape(url).get(lag) == 6, 20, message="lag 6 of billing")
        lag_s = ("kafka_consumergroup_group_lag_seconds", lag[1])
        assert scrape(url)[lag_s] > 0
        # The worker's own group is followed too (it has committed nothing yet: no series).
        forwarded = ("kops_delay_forwarded_total", (("tier", "1s"),))
        before = scrape(url).get(forwarded, 0.0)
        tiers = DelayTiers.parse("1s,2s", template=template)
        for i in range(3):
            send_delayed(producer, target, f"d{i}".encode(), delay=1.0, tiers=tiers)
        assert producer.flush(10) == 0
        wait_until(lambda: scrape(url).get(forwarded, 0.0) - before >= 3, 20, message="3 forwarded")
        samples = scrape(url)
        assert samples[("kops_delay_lateness_seconds_count", (("tier", "1s"),))] >= 3
        # Once the forwarders commit, their group's lag shows up and drops to 0.
        fwd_lag = (
            "kafka_consumergroup_group_lag",
            (("group", f"wm-{tag}"), ("partition", "0"), ("topic", f"wm{tag}.1s")),
        )
        wait_until(lambda: scrape(url).get(fwd_lag) == 0, 20, message="forwarders' lag 0")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(5)
    text = "".join(err)
    assert "worker stopped" in text and "Traceback" not in text
