"""``kops lag``: option parsing, a real snapshot, and --watch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from kops.cli.lag import format_age
from kops.cli.main import main
from kops.client import AdminSession
from kops.recipes.offsets import alter_group_offsets

Kops = Callable[..., subprocess.CompletedProcess[str]]


def test_format_age() -> None:
    assert [format_age(s) for s in (None, 0.42, 12, 312, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "-", "0.4s", "12s", "5m12s", "3h05m", "2d04h",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--samples", "0"], "--samples"), (["--interval", "soon"], "invalid duration")],
)
def test_usage_mistakes(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["lag", *args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def _group_with_lag(bootstrap: str, kops: Kops) -> tuple[str, str]:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    assert kops("topic", "create", topic, "--partitions", "1").returncode == 0
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(7):
        producer.produce(topic, value=f"v{i}".encode())
    assert producer.flush(10) == 0
    with AdminSession(bootstrap) as session:
        alter_group_offsets(session, group, {(topic, 0): 2})
    return topic, group


def test_lag_json_and_table(kafka_broker: str, kops: Kops) -> None:
    topic, group = _group_with_lag(kafka_broker, kops)
    result = kops("lag", group, "--samples", "2", "--interval", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    [g] = json.loads(result.stdout)
    assert (g["group"], g["total_lag"], g["status"]) == (group, 5, "STOPPED")
    [p] = g["partitions"]
    assert (p["topic"], p["committed_offset"], p["log_end_offset"], p["lag"]) == (topic, 2, 7, 5)
    assert 0 <= p["lag_seconds"] < 120  # the records were just produced

    table = kops("lag", group, "--topic", topic, "--samples", "1", "--no-time-lag")
    assert table.returncode == 0, table.stderr
    assert "STATUS" in table.stdout and "STOPPED" in table.stdout
    assert f"{group}: empty, 0 members, lag 5 records" in table.stdout

    missing = kops("lag", f"nobody-{uuid.uuid4().hex[:6]}", "--samples", "1")
    assert missing.returncode == 1 and "unknown consumer group" in missing.stderr


def test_watch_prints_a_document_per_refresh(kafka_broker: str, kops: Kops) -> None:
    _, group = _group_with_lag(kafka_broker, kops)
    env = {**os.environ, "KOPS_BOOTSTRAP": kafka_broker}
    command = [sys.executable, "-m", "kops", "lag", group, "--watch", "--json", "-i", "0.2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        docs = [json.loads(proc.stdout.readline()) for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert all(d[0]["group"] == group and d[0]["total_lag"] == 5 for d in docs)


def test_group_with_no_commits_says_so(kafka_broker: str, kops: Kops) -> None:
    from confluent_kafka import Consumer

    from kops.testing import wait_until

    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    assert kops("topic", "create", topic, "--partitions", "1").returncode == 0
    producer = Producer({"bootstrap.servers": kafka_broker})
    producer.produce(topic, value=b"v")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka_broker, "group.id": group, "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    try:
        wait_until(lambda: consumer.poll(0.1) is None and consumer.assignment(), 30)
        result = kops("lag", group, "--samples", "1", "--json")
        assert result.returncode == 0, result.stderr
        [g] = json.loads(result.stdout)
        assert [p["status"] for p in g["partitions"]] == ["NO_COMMITS"]
        human = kops("lag", group, "--samples", "1")
        assert human.returncode == 0, human.stderr
        assert "no commits yet" in human.stdout and "UNKNOWN" not in human.stdout
    finally:
        consumer.close()
