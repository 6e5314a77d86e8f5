"""``kops rewind``: option parsing, dry run, --execute, --export/--from-file undo, refusal."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer

from kops.cli.main import main
from kops.client import AdminSession
from kops.recipes.offsets import alter_group_offsets, committed_offsets

Kops = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["g", "--topic", "t"], "give exactly one of"),
        (["g", "--topic", "t", "--to-earliest", "--to-latest"], "cannot be combined"),
        (["g", "--topic", "t", "--shift-by", "-2", "--to-offset", "1"], "cannot be combined"),
        (["g", "--to-earliest"], "--topic is required"),
        (["g", "--topic", "t", "--to-offset", "-1"], "-1"),
        (["g", "--topic", "t", "--by-duration", "soon"], "invalid duration"),
        (["g", "--topic", "t", "--to-datetime", "yesterday-ish"], "invalid timestamp"),
        (["g", "--topic", "t", "--to-earliest", "--partitions", "0,x"], "comma-separated"),
        (["g", "--topic", "t", "--to-earliest", "--partitions", "3-1"], "ends before it starts"),
        (["g", "--from-file", "/no/such/file.csv"], "does not exist"),
    ],
)
def test_usage_mistakes(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["rewind", *args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]


def _setup(bootstrap: str, kops: Kops) -> tuple[str, str]:
    topic, group = f"rw-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    assert kops("topic", "create", topic, "--partitions", "2").returncode == 0
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % 2)
    assert producer.flush(10) == 0
    with AdminSession(bootstrap) as session:
        alter_group_offsets(session, group, {(topic, 0): 5, (topic, 1): 4})
    return topic, group


def _committed(bootstrap: str, group: str) -> dict:
    with AdminSession(bootstrap) as session:
        return committed_offsets(session, group)


def test_dry_run_execute_export_and_undo(kafka_broker: str, kops: Kops, tmp_path: Path) -> None:
    topic, group = _setup(kafka_broker, kops)

    dry = kops("rewind", group, "--topic", topic, "--shift-by", "-2", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["executed"] is False and plan["reread"] == 4
    assert [(p["current_offset"], p["new_offset"]) for p in plan["partitions"]] == [(5, 3), (4, 2)]
    assert "dry run" in dry.stderr and "--execute" in dry.stderr
    assert _committed(kafka_broker, group) == {(topic, 0): 5, (topic, 1): 4}

    saved = tmp_path / "before.csv"
    done = kops(
        "rewind", group, "--topic", topic, "--partitions", "1", "--to-earliest",
        "--execute", "--export", str(saved),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "re-read 4" in done.stdout  # the table's CHANGE column
    assert "committed" in done.stderr and "--from-file" in done.stderr
    assert saved.read_text() == f"{topic},1,4\n"
    assert _committed(kafka_broker, group) == {(topic, 0): 5, (topic, 1): 0}

    undo = kops("rewind", group, "--from-file", str(saved), "--execute")
    assert undo.returncode == 0, undo.stderr
    assert _committed(kafka_broker, group) == {(topic, 0): 5, (topic, 1): 4}


def test_refuses_while_the_group_is_active(kafka_broker: str, kops: Kops) -> None:
    topic, group = _setup(kafka_broker, kops)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker,
            "group.id": group,
            "session.timeout.ms": 6000,
            "enable.auto.commit": False,  # a member that never commits: offsets stay put
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 15
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
        result = kops("rewind", group, "--topic", topic, "--to-earliest", "--execute")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "1 active member" in lines[0], result.stderr
        preview = kops("rewind", group, "--topic", topic, "--to-earliest")
        assert preview.returncode == 0 and "will refuse until they stop" in preview.stderr
    finally:
        consumer.close()
    assert _committed(kafka_broker, group) == {(topic, 0): 5, (topic, 1): 4}


def test_malformed_from_file_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "offsets.csv"
    path.write_text("orders,0,5\norders,1,5x\n")
    result = CliRunner().invoke(main, ["rewind", "g", "--from-file", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {path}:2:10: offset must be a whole number >= 0, got '5x'"]


def test_partition_lists_take_ranges() -> None:
    from kops.cli.common import parse_int_list

    assert parse_int_list("0,1,3-5") == [0, 1, 3, 4, 5]
    assert parse_int_list(" 2, 0-2 ,7") == [2, 0, 1, 7]  # duplicates dropped, order kept
    with pytest.raises(ValueError, match=">= 1"):
        parse_int_list("0-2", minimum=1)
