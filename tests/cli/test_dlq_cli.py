"""``kops dlq ...`` against the bundled broker, through the real entry point."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from kops.admin import create_topic
from kops.recipes.dlq import dead_letter_headers

Kops = Callable[..., subprocess.CompletedProcess[str]]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def dlq(kafka_broker: str, topic: str) -> str:
    """TOPIC (1 partition) and TOPIC.dlq with 3 ValueError and 1 KeyError dead letters."""
    create_topic(kafka_broker, topic, partitions=1)
    create_topic(kafka_broker, f"{topic}.dlq", partitions=1)
    p = Producer({"bootstrap.servers": kafka_broker})
    for i, exc in enumerate([ValueError("bad"), ValueError("bad"), ValueError("x"), KeyError("k")]):
        hs = dead_letter_headers(
            [], exc, topic=topic, partition=0, offset=i, timestamp_ms=1, group="g",
            attempts=2, first_failure_ms=1, reason="retries-exhausted",
        )  # fmt: skip
        p.produce(f"{topic}.dlq", f"value-{i}".encode(), key=f"key-{i}".encode(), headers=hs)
    assert p.flush(10) == 0
    return f"{topic}.dlq"


def test_help(run_kops: Kops) -> None:
    for args in (["dlq"], ["dlq", "list"], ["dlq", "inspect"], ["dlq", "replay"], ["dlq", "purge"]):
        result = ok(run_kops(*args, "--help"))
        assert "Usage: kops dlq" in result.stdout
    replay_help = run_kops("dlq", "replay", "--help").stdout
    for option in ("--to", "--exception", "--since", "--until", "--key", "--rate", "--limit",
                   "--dry-run", "--bootstrap", "--json"):  # fmt: skip
        assert option in replay_help


def test_list_and_inspect(kops: Kops, dlq: str) -> None:
    listed = json.loads(ok(kops("dlq", "list", "--json")).stdout)
    entry = next(t for t in listed if t["topic"] == dlq)
    assert entry["records"] == 4 and entry["detected_by"] == "name"
    row = next(line for line in ok(kops("dlq", "list")).stdout.splitlines() if dlq in line)
    assert row.split()[:3] == [dlq, "1", "4"]

    report = json.loads(ok(kops("dlq", "inspect", dlq, "--json")).stdout)
    assert report["records"] == 4 and report["formats"] == {"kops": 4}
    assert [(e["exception_class"], e["count"]) for e in report["exceptions"]] == [
        ("ValueError", 3),
        ("KeyError", 1),
    ]
    assert report["exceptions"][0]["samples"][0]["key"] == "key-0"
    human = ok(kops("dlq", "inspect", dlq))
    assert "4 dead letters (kops 4), 0 replayed" in human.stderr
    assert "ValueError" in human.stdout and "key-0" in human.stdout


def test_replay_dry_run_filter_once(kops: Kops, dlq: str, topic: str) -> None:
    dry = json.loads(ok(kops("dlq", "replay", dlq, "--dry-run", "--json")).stdout)
    assert dry["replayed"] == 4 and dry["dry_run"] is True and len(dry["planned"]) == 4

    one = ok(kops("dlq", "replay", dlq, "--exception", "KeyError", "--rate", "0", "--json"))
    assert json.loads(one.stdout)["replayed"] == 1
    assert f"replayed 1 of 1 matching dead letter to {topic} (1)" in one.stderr
    rest = ok(kops("dlq", "replay", dlq, "--key", "key-2", "--rate", "0"))
    assert "replayed 1 of 1" in rest.stderr
    again = ok(kops("dlq", "replay", dlq, "--rate", "0", "--json"))
    assert json.loads(again.stdout)["replayed"] == 2
    assert "2 already replayed" in again.stderr
    none = json.loads(ok(kops("dlq", "replay", dlq, "--json")).stdout)
    assert none["replayed"] == 0 and none["already_replayed"] == 4

    consumed = ok(kops("consume", topic, "--from-beginning", "--max-messages", "4", "--json"))
    assert len(consumed.stdout.strip().splitlines()) == 4


def test_purge(kops: Kops, dlq: str) -> None:
    wrong = kops("dlq", "purge", dlq)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: give exactly one")
    old = json.loads(ok(kops("dlq", "purge", dlq, "--before", "2000-01-01", "--json")).stdout)
    assert old["deleted"] == 0
    everything = json.loads(ok(kops("dlq", "purge", dlq, "--all", "--json")).stdout)
    assert everything["deleted"] == 4
    assert everything["partitions"][0]["start_after"] == 4
    report = json.loads(ok(kops("dlq", "inspect", dlq, "--json")).stdout)
    assert report["records"] == 0


def test_errors(kops: Kops, run_kops: Kops) -> None:
    missing = kops("dlq", "inspect", "no-such-topic.dlq")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: unknown topic 'no-such-topic.dlq'"
    down = run_kops("dlq", "list", bootstrap="127.0.0.1:1", timeout=30)
    assert down.returncode == 1 and down.stderr.startswith("error: ")
    assert "Traceback" not in down.stderr
