"""``kops bench produce|consume|sweep``: option parsing and small real runs."""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from kops.cli.main import main

Kops = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["produce", "--throughput", "0"], "--throughput"),
        (["produce", "--acks", "2"], "--acks"),
        (["produce", "--num-records", "0"], "--num-records"),
        (["consume"], "TOPIC"),
        (["sweep", "--partitions", "0,2"], ">= 1"),
        (["sweep", "--partitions", "1,x"], "comma-separated"),
        (["sweep", "--target-throughput", "-5"], "--target-throughput"),
    ],
)
def test_usage_mistakes(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_produce_and_consume(kafka_broker: str, kops: Kops) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    assert kops("topic", "create", topic, "--partitions", "2").returncode == 0
    produced = kops(
        "bench", "produce", topic, "-n", "200", "-s", "50", "--acks", "1",
        "--batch-size", "16384", "--linger-ms", "2", "--json",
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    data = json.loads(produced.stdout)
    assert (data["records"], data["bytes"], data["errors"]) == (200, 10_000, 0)
    assert set(data["latency"]) == {"avg_ms", "max_ms", "p50_ms", "p95_ms", "p99_ms", "p999_ms"}

    consumed = kops("bench", "consume", topic, "--consumers", "2")
    assert consumed.returncode == 0, consumed.stderr
    assert "RECORDS/S" in consumed.stdout and "P99.9" in consumed.stdout
    assert consumed.stderr.startswith("200 records consumed")

    # Without a topic: a scratch topic is made and removed.
    scratch = kops("bench", "produce", "-n", "50", "-s", "10", "--throughput", "500")
    assert scratch.returncode == 0, scratch.stderr
    assert "50 records sent" in scratch.stderr
    listed = kops("topic", "list").stdout
    assert "kops-bench-" not in listed


def test_sweep_with_plot(kafka_broker: str, kops: Kops, tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    args = ["bench", "sweep", "-p", "1,2", "-n", "200", "-s", "100", "-t", "1", "--json"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        result = kops(*args, "--plot", str(plot))
        assert result.returncode == 1 and "pip install matplotlib" in result.stderr
        result = kops(*args)
    else:
        result = kops(*args, "--plot", str(plot))
        assert plot.read_bytes()[:4] == b"\x89PNG"
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [pt["partitions"] for pt in data["points"]] == [1, 2]
    assert all(pt["consume"]["records"] == 200 for pt in data["points"])
    assert data["consumers"] == 2  # default: the largest partition count
    assert data["recommendation"]["by_rule"] >= 1
    rec = data["recommendation"]
    # The text (stderr) and the JSON (stdout) of one run say the same, from the same figures.
    assert rec["text"] in result.stderr.strip().splitlines()
    p, c = rec["produce_mb_per_sec_per_partition"], rec["consume_mb_per_sec_per_partition"]
    assert rec["partitions"] == math.ceil(max(1 / p, 1 / c))  # -t 1
    assert f"recommended: {rec['partitions']} partition" in rec["text"]
    assert f"p = {p} MB/s produce, c = {c} MB/s consume on 1 partition" in rec["text"]
    # Measured by this sweep, at 1 partition (the points carry 4 decimals, the rule 3).
    one = data["points"][0]
    assert abs(p - one["produce"]["mb_per_sec"]) < 6e-4
    assert abs(c - one["consume"]["mb_per_sec"]) < 6e-4
    if data["plot"] is not None:  # the chart marks the same count
        assert data["plot"] == {"path": str(plot), "recommended_partitions": rec["partitions"]}


def test_sweep_text_shows_table_and_recommendation(kops: Kops) -> None:
    result = kops("bench", "sweep", "-p", "1", "-n", "200", "-s", "100", "-t", "2")
    assert result.returncode == 0, result.stderr
    assert "PRODUCE-P99-MS" in result.stdout and "CONSUME-P99-MS" in result.stdout
    assert "recommended: " in result.stderr and "ceil(max(" in result.stderr
