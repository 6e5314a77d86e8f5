"""``kops replay``: option parsing and a real copy of a window."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from kops.cli.main import main

Kops = Callable[..., subprocess.CompletedProcess[str]]
BASE_MS = 1_700_000_000_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["t", "--into", "u"], "--from"),
        (["t", "--from", "1h"], "--into"),
        (["t", "--from", "whenever", "--into", "u"], "invalid timestamp"),
        (["t", "--from", "1h", "--into", "u", "--rate", "0"], "--rate"),
    ],
)
def test_usage_mistakes(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["replay", *args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_replay_a_window_into_a_new_topic(kafka_broker: str, kops: Kops) -> None:
    src, dst = f"src-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    assert kops("topic", "create", src, "--partitions", "1").returncode == 0
    producer = Producer({"bootstrap.servers": kafka_broker})
    for i in range(10):
        producer.produce(
            src, value=f"v{i}".encode(), key=b"k", headers=[("n", str(i).encode())],
            timestamp=BASE_MS + i * 1000,
        )  # fmt: skip
    assert producer.flush(10) == 0

    window = ["--from", "2023-11-14T22:13:22Z", "--to", str(BASE_MS + 7000)]  # [2 s, 7 s)
    missing = kops("replay", src, *window, "--into", dst)
    assert missing.returncode == 1 and "--create" in missing.stderr

    result = kops("replay", src, *window, "--into", dst, "--create", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["copied"] == 5 and report["failed"] == 0
    assert f"copied 5 records from {src}" in result.stderr

    out = kops("consume", dst, "--from-beginning", "--exit-at-end", "--json")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["value"], r["key"], r["timestamp"]) for r in records] == [
        (f"v{i}", "k", BASE_MS + i * 1000) for i in range(2, 7)
    ]
    assert records[0]["headers"] == [{"key": "n", "value": "2", "value_encoding": "utf-8"}]
