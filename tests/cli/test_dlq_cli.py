"""``kops dlq ...`` against the bundled broker, through the real entry point."""

from __future__ import annotations

import json
import struct
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
    assert dry["would_replay"] == 4 and dry["dry_run"] is True and len(dry["planned"]) == 4
    assert "replayed" not in dry  # a dry run replays nothing, and its JSON does not say so

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


SPRING_WRAPPER = "org.springframework.kafka.listener.ListenerExecutionFailedException"


@pytest.fixture
def mixed_dlq(kafka_broker: str, topic: str) -> str:
    """TOPIC.DLT: 3 Spring dead letters (2 IllegalStateException, 1 OutOfStock, each wrapped in
    ListenerExecutionFailedException) and 1 Connect one (a DataException in a
    ConnectException), all from TOPIC partition 0."""
    create_topic(kafka_broker, topic, partitions=1)
    dlq = f"{topic}.DLT"
    create_topic(kafka_broker, dlq, partitions=1)
    p = Producer({"bootstrap.servers": kafka_broker})
    for i, cause in enumerate(
        [
            "java.lang.IllegalStateException",
            "java.lang.IllegalStateException",
            "com.shop.OutOfStock",
        ]
    ):
        p.produce(dlq, f"v{i}".encode(), key=f"k{i}".encode(), headers=[
            ("kafka_dlt-original-topic", topic.encode()),
            ("kafka_dlt-original-partition", struct.pack(">i", 0)),
            ("kafka_dlt-original-offset", struct.pack(">q", 100 + i)),
            ("kafka_dlt-exception-fqcn", SPRING_WRAPPER.encode()),
            ("kafka_dlt-exception-cause-fqcn", cause.encode()),
            ("kafka_dlt-exception-message", b"Listener method threw exception"),
        ])  # fmt: skip
    c = "__connect.errors."
    p.produce(dlq, b"v3", key=b"k3", headers=[
        (c + "topic", topic.encode()), (c + "partition", b"0"), (c + "offset", b"103"),
        (c + "exception.class.name", b"org.apache.kafka.connect.errors.ConnectException"),
        (c + "exception.stacktrace", b"org.apache.kafka.connect.errors.ConnectException: x\n"
         b"Caused by: org.apache.kafka.connect.errors.DataException: bad bytes\n"),
    ])  # fmt: skip
    assert p.flush(10) == 0
    return dlq


def test_inspect_groups_by_the_real_cause_and_shows_the_origin(kops: Kops, mixed_dlq: str,
                                                               topic: str) -> None:  # fmt: skip
    report = json.loads(ok(kops("dlq", "inspect", mixed_dlq, "--json")).stdout)
    assert [(e["exception_class"], e["count"]) for e in report["exceptions"]] == [
        ("java.lang.IllegalStateException", 2),
        ("com.shop.OutOfStock", 1),
        ("org.apache.kafka.connect.errors.DataException", 1),
    ]
    sample = report["exceptions"][0]["samples"][0]
    assert (sample["offset"], sample["origin"]) == (0, f"{topic}/0@100")
    human = ok(kops("dlq", "inspect", mixed_dlq))
    assert "ListenerExecutionFailedException" not in human.stdout
    row = next(line for line in human.stdout.splitlines() if f"{topic}/0@101" in line)
    assert row.split()[:3] == ["java.lang.IllegalStateException", "0@1", f"{topic}/0@101"]


def test_replay_exception_names_limit_and_dry_run_wording(kops: Kops, mixed_dlq: str) -> None:
    for name in (
        "illegalstateexception",
        "java.lang.IllegalStateException",
        "ILLEGALSTATEEXCEPTION",
    ):
        dry = json.loads(ok(kops("dlq", "replay", mixed_dlq, "--exception", name, "--dry-run",
                                 "--json")).stdout)  # fmt: skip
        assert dry["matched"] == 2 and dry["would_replay"] == 2, name
    limited = ok(kops("dlq", "replay", mixed_dlq, "--limit", "1", "--dry-run", "--json"))
    data = json.loads(limited.stdout)
    # Every match is counted, not only the first --limit of them.
    assert (data["matched"], data["would_replay"], data["over_limit"]) == (4, 1, 3)
    assert "would replay 1 of 4 matching dead letters" in limited.stderr
    assert "3 more left by --limit 1" in limited.stderr
    sent = ok(kops("dlq", "replay", mixed_dlq, "--limit", "2", "--rate", "0", "--json"))
    assert json.loads(sent.stdout)["replayed"] == 2
    assert "replayed 2 of 4 matching dead letters" in sent.stderr and "2 more left" in sent.stderr


def test_purge_dry_run_deletes_nothing(kops: Kops, dlq: str) -> None:
    dry = ok(kops("dlq", "purge", dlq, "--all", "--dry-run", "--json"))
    data = json.loads(dry.stdout)
    assert data["dry_run"] is True and data["would_delete"] == 4 and "deleted" not in data
    assert data["partitions"][0]["start_would_be"] == 4
    human = ok(kops("dlq", "purge", dlq, "--all", "--dry-run"))
    assert "WOULD DELETE" in human.stdout and "would delete 4 dead letters" in human.stderr
    assert json.loads(ok(kops("dlq", "inspect", dlq, "--json")).stdout)["records"] == 4
