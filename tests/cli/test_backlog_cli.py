"""``kops backlog fanout`` / ``kops backlog status`` through the real entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import ClientSettings, KopsClientError
from kops.testing import wait_until

Kops = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def backlog(kafka_broker: str) -> tuple[str, str]:
    """A 3-partition source with 3,000 keyed records, and a fresh group name."""
    source = f"cli-bl-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, source, 3)
    producer = Producer(ClientSettings(kafka_broker).producer_config())
    for i in range(3000):
        producer.produce(source, key=f"k{i % 50}".encode(), value=str(i).encode())
    assert producer.flush(30) == 0
    return source, f"g-{source}"


def test_help(run_kops: Kops) -> None:
    for args in (["backlog"], ["backlog", "fanout"], ["backlog", "status"]):
        result = run_kops(*args, "--help")
        assert result.returncode == 0, result.stderr
        assert "--bootstrap" in result.stdout or args == ["backlog"]
    assert "--until-caught-up" in run_kops("backlog", "fanout", "--help").stdout


def test_usage_errors_are_one_line(run_kops: Kops) -> None:
    result = run_kops("backlog", "fanout", "--from", "a", "--to", "b")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "--group" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_kops("backlog", "fanout", "--from", "a", "-g", "g", "--to", "b", "-p", "0")
    assert result.returncode == 1 and result.stderr.startswith("error: ")


def test_unreachable_broker(run_kops: Kops) -> None:
    result = run_kops("backlog", "status", "--group", "g", bootstrap="127.0.0.1:1", timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_fanout_then_status(kops: Kops, kafka_broker: str, backlog: tuple[str, str]) -> None:
    source, group = backlog
    target, drain = f"{source}.fo", f"{source}.drain"
    result = kops(
        "backlog", "fanout", "--from", source, "--group", group, "--to", target,
        "--partitions", "8", "--until-caught-up", "--drain-group", drain, "--start", "earliest",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["forwarded"] == 3000 and report["caught_up"] and report["created_target"]
    assert "forwarded 3000 records" in result.stderr and "caught up" in result.stderr

    # Run again: nothing left, resumes at the committed end.
    again = json.loads(
        kops(
            "backlog",
            "fanout",
            "--from",
            source,
            "-g",
            group,
            "--to",
            target,
            "-p",
            "8",
            "--until-caught-up",
            "--json",
        ).stdout
    )
    assert again["forwarded"] == 0 and again["caught_up"] and not again["created_target"]

    # A drain consumer reads 1,000 records of the target and commits.
    c = Consumer(ClientSettings(kafka_broker).consumer_config(drain))
    c.subscribe([target])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 1000 and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            seen += 1
            c.store_offsets(msg)
    c.commit(asynchronous=False)
    c.close()

    status = kops("backlog", "status", "--group", group, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["source"]["lag"] == 0 and data["source"]["topics"] == [source]
    assert data["fanout"] == {"target": target, "partitions": 8, "forwarded": 3000, "progress": 1.0}
    assert data["drain"]["group"] == drain and data["drain"]["lag"] == 2000

    table = kops("backlog", "status", "-g", group, "--detail")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.split()[:2] == ["fan-out", target] and "100.0%" in line for line in lines)
    assert any(line.split()[:1] == ["drain"] and "2,000" in line for line in lines)
    assert f"drain group {drain}" in table.stdout  # the per-partition tables

    sampled = kops("backlog", "status", "-g", group, "--interval", "1s", "--json")
    assert json.loads(sampled.stdout)["drain"]["consume_rate"] == 0.0


def test_status_of_unknown_group_and_missing_source(kops: Kops, backlog: tuple[str, str]) -> None:
    result = kops("backlog", "status", "--group", f"nope-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 1 and "unknown consumer group" in result.stderr
    result = kops(
        "backlog", "fanout", "--from", "no-such-topic", "-g", "g", "--to", "t2", "-p", "4"
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown topic 'no-such-topic'"


def test_refuses_while_the_group_has_members(
    kops: Kops, kafka_broker: str, backlog: tuple[str, str]
) -> None:
    source, group = backlog
    member = Consumer(ClientSettings(kafka_broker).consumer_config(group))
    member.subscribe([source])
    deadline = time.monotonic() + 20
    while not member.assignment() and time.monotonic() < deadline:
        member.poll(0.2)
    try:
        result = kops("backlog", "fanout", "--from", source, "-g", group, "--to", f"{source}.x")
        assert result.returncode == 1
        assert "active member" in result.stderr and "stop its consumers" in result.stderr
    finally:
        member.close()


def test_ctrl_c_stops_cleanly_and_commits(kafka_broker: str, backlog: tuple[str, str]) -> None:
    source, group = backlog
    env = {**os.environ, "KOPS_BOOTSTRAP": kafka_broker}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "backlog", "fanout", "--from", source, "-g", group,
         "--to", f"{source}.fo", "-p", "4", "--rate", "1000", "--start", "earliest"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def forwarded_some() -> bool:
        try:
            return (admin.describe_topic(kafka_broker, f"{source}.fo").total_records or 0) >= 500
        except KopsClientError:
            return False  # the target is not created yet

    wait_until(forwarded_some, 30, message="the fan-out to forward 500 records")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "progress committed on group" in err
    c = Consumer(ClientSettings(kafka_broker).consumer_config(group))
    committed = c.committed([TopicPartition(source, p) for p in range(3)], timeout=10)
    c.close()
    total = sum(tp.offset for tp in committed if tp.offset > 0)
    forwarded = admin.describe_topic(kafka_broker, f"{source}.fo").total_records
    assert 0 < total < 3000
    assert total == forwarded  # a clean stop commits exactly what was forwarded


def test_group_without_commits_needs_start(kops: Kops, backlog: tuple[str, str]) -> None:
    source, group = backlog
    args = ["backlog", "fanout", "--from", source, "-g", group, "--to", f"{source}.fo", "-p", "4"]
    refused = kops(*args, "--until-caught-up")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "no committed offsets" in lines[0] and "3000 records" in lines[0]
    assert "--start earliest|latest|TIME" in lines[0]
    bad = kops(*args, "--start", "someday")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "start" in bad.stderr

    latest = kops(*args, "--until-caught-up", "--start", "latest", "--json")
    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["forwarded"] == 0
    # "latest" committed where it started: the group now resumes without --start.
    resumed = kops(*args, "--until-caught-up", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["forwarded"] == 0

    other = ["-g", f"{group}-2", "--to", f"{source}.fo2"]
    whole = kops(*args[:4], *other, "-p", "4", "--until-caught-up", "--start", "earliest",
                 "--json")  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    assert json.loads(whole.stdout)["forwarded"] == 3000
