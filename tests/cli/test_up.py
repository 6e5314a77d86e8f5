"""``kops up``: starts the broker and the worker, shows them, stops both on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from kops import admin
from kops.client import KopsClientError
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, send_delayed
from kops.testing import free_port, free_ports, wait_until


def _sample(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _start_up(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "up", *args],
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if k != "KOPS_BOOTSTRAP"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    return proc, err


def _wait_running(proc: subprocess.Popen[str], err: list[str], timeout: float = 60) -> str:
    out: list[str] = []
    reader = threading.Thread(
        target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True
    )  # type: ignore[union-attr]
    reader.start()

    def running() -> bool:
        if any("kops up: running" in line for line in out):
            return True
        assert proc.poll() is None, "kops up exited:\n" + "".join(err[-20:])
        return False

    wait_until(running, timeout, message=lambda: "kops up to come up:\n" + "".join(err[-20:]))
    return "".join(out)


def test_up_starts_broker_and_worker_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    recipe = tmp_path / "delay.toml"
    recipe.write_text('[[job]]\nkind = "delay-forwarders"\ntiers = ["1s", "2s"]\n')
    proc, err = _start_up(  # -vv: assignments (DEBUG) and job stops (INFO) on stderr
        ["-vv", "--bootstrap", bootstrap, "--data-dir", str(tmp_path / "data"), str(recipe)]
    )
    try:
        shown = _wait_running(proc, err)
        assert "started" in shown and "delay-forwarders" in shown and bootstrap in shown

        # Everything works through the Kafka protocol: a delayed record is forwarded.
        wait_until(lambda: "tier 2s: assigned" in "".join(err), 30, message="tier 2s assigned")
        admin.create_topic(bootstrap, "up-target", 1)
        producer = Producer({"bootstrap.servers": bootstrap})
        msg_id = send_delayed(
            producer, "up-target", b"hi", delay=1, tiers=DelayTiers.parse("1s,2s")
        )
        assert producer.flush(10) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "up-reader",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe(["up-target"])
        got = None
        deadline = time.monotonic() + 15
        while got is None and time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is not None and m.error() is None:
                got = m
        consumer.close()
        assert got is not None and h.get(got.headers(), h.MESSAGE_ID) == msg_id

        # kops up serves both metrics endpoints on loopback ports it prints.
        broker_url = re.search(r"broker metrics on (\S+)", shown).group(1)  # type: ignore[union-attr]
        worker_url = re.search(r"worker metrics on (\S+)", shown).group(1)  # type: ignore[union-attr]
        assert broker_url.startswith("http://127.0.0.1:") and worker_url != broker_url
        assert (
            _sample(
                broker_url, "kafka_server_brokertopicmetrics_messagesin_total", topic="up-target"
            )
            == 1
        )
        assert _sample(worker_url, "kops_delay_forwarded_total") >= 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 143, "".join(err[-20:])  # 128 + SIGTERM: a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(err)
    assert "delay forwarders stopped" in text and "kops up: stopped" in text
    with socket.socket() as s:  # the broker is gone too
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert any((tmp_path / "data").iterdir())


def test_up_uses_a_broker_that_already_answers(kafka_broker: str, tmp_path: Path) -> None:
    recipe = tmp_path / "status.toml"
    tag = uuid.uuid4().hex[:8]
    recipe.write_text(
        f'[[job]]\nkind = "delay-status"\nevery = "1h"\ntiers = ["1s"]\ntemplate = "u{tag}.{{tier}}"\n'
    )
    proc, err = _start_up(["--bootstrap", kafka_broker, str(recipe)])
    try:
        shown = _wait_running(proc, err)
        assert "using the broker already at" in shown
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_bad_recipe_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[job]]\nkind = 'no-such-kind'\n")
    res = subprocess.run(
        [sys.executable, "-m", "kops", "up", "--bootstrap", f"127.0.0.1:{free_port()}", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "unknown job kind 'no-such-kind'" in res.stderr


def test_up_with_three_nodes_runs_the_jobs_on_a_replicated_cluster(tmp_path: Path) -> None:
    base = free_ports(3)
    bootstrap = ",".join(f"127.0.0.1:{base + n}" for n in range(3))
    recipe = tmp_path / "delay.toml"
    recipe.write_text('[[job]]\nkind = "delay-forwarders"\ntiers = ["1s"]\n')
    proc, err = _start_up(
        ["--nodes", "3", "--bootstrap", f"127.0.0.1:{base}", "--data-dir", str(tmp_path / "c"),
         str(recipe)]
    )  # fmt: skip
    try:
        shown = _wait_running(proc, err, timeout=90)
        assert "started a cluster of 3" in shown and bootstrap in shown
        # Topics get replication factor 3 by default on a cluster kops up starts.
        admin.create_topic(bootstrap, "up-replicated", 1)

        def described() -> admin.TopicInfo | None:
            # Each broker applies the new topic at its own pace; any may answer.
            with contextlib.suppress(KopsClientError):
                return admin.describe_topic(bootstrap, "up-replicated")
            return None

        info = wait_until(described, 30)
        assert isinstance(info, admin.TopicInfo) and info.replication_factor == 3
        assert sorted(info.partitions[0].isr) == [1, 2, 3]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143, "".join(err[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in "".join(err)
    for n in range(3):
        with socket.socket() as s:  # every broker is gone
            assert s.connect_ex(("127.0.0.1", base + n)) != 0
