"""``kops topic ...`` against a real broker, through the real entry point."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

Kops = Callable[..., subprocess.CompletedProcess[str]]


def _describe(kops: Kops, topic: str) -> dict:
    result = kops("topic", "describe", topic, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_create_list_describe_delete(kops: Kops, topic: str) -> None:
    result = kops(
        "topic",
        "create",
        topic,
        "--partitions",
        "3",
        "--config",
        "retention.ms=3600000",
        "--config",
        "cleanup.policy=delete",
    )
    assert result.returncode == 0, result.stderr
    assert f"created topic {topic}" in result.stderr

    listed = kops("topic", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {t["name"]: t for t in json.loads(listed.stdout)}
    assert entries[topic]["partitions"] == 3
    assert entries[topic]["internal"] is False

    human = kops("topic", "list")
    assert human.returncode == 0
    row = next(line for line in human.stdout.splitlines() if line.startswith(topic))
    assert row.split()[:2] == [topic, "3"]

    info = _describe(kops, topic)
    assert info["name"] == topic
    assert [p["partition"] for p in info["partitions"]] == [0, 1, 2]
    for p in info["partitions"]:
        assert p["leader"] is not None
        assert p["leader"] in p["replicas"]
        assert p["isr"]
        assert p["start_offset"] == 0
        assert p["end_offset"] == 0
        assert p["records"] == 0
    assert info["records"] == 0
    assert info["configs"]["retention.ms"]["value"] == "3600000"
    assert info["configs"]["cleanup.policy"]["value"] == "delete"

    deleted = kops("topic", "delete", topic)
    assert deleted.returncode == 0, deleted.stderr
    after = json.loads(kops("topic", "list", "--json").stdout)
    assert topic not in {t["name"] for t in after}


def test_describe_counts_records_per_partition(kops: Kops, topic: str) -> None:
    assert kops("topic", "create", topic, "-p", "2").returncode == 0
    assert kops("produce", topic, "-p", "1", input="a\nb\nc\n").returncode == 0

    info = _describe(kops, topic)
    by_id = {p["partition"]: p for p in info["partitions"]}
    assert (by_id[0]["start_offset"], by_id[0]["end_offset"], by_id[0]["records"]) == (0, 0, 0)
    assert (by_id[1]["start_offset"], by_id[1]["end_offset"], by_id[1]["records"]) == (0, 3, 3)
    assert info["records"] == 3
    # one batch of three 1-byte records: the 61-byte header plus the records
    assert 61 < info["size_bytes"] < 200

    human = kops("topic", "describe", topic)
    assert human.returncode == 0, human.stderr
    assert f"Topic: {topic}" in human.stdout
    assert "Records: 3" in human.stdout
    assert f"Size: {info['size_bytes']} bytes" in human.stdout
    rows = [line.split() for line in human.stdout.splitlines() if line.strip()]
    # PARTITION LEADER REPLICAS ISR START END RECORDS
    assert any(r[0] == "1" and r[-3:] == ["0", "3", "3"] for r in rows), human.stdout


def test_create_existing_topic_fails(kops: Kops, topic: str) -> None:
    assert kops("topic", "create", topic, "-p", "1").returncode == 0
    again = kops("topic", "create", topic, "-p", "1")
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: topic '{topic}' already exists"

    tolerant = kops("topic", "create", topic, "-p", "1", "--if-not-exists", "--json")
    assert tolerant.returncode == 0, tolerant.stderr
    assert json.loads(tolerant.stdout) == {"topic": topic, "created": False}


def test_delete_if_exists(kops: Kops, topic: str) -> None:
    result = kops("topic", "delete", topic, "--if-exists")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"topic {topic} does not exist"


def test_unknown_topic_errors(kops: Kops, topic: str) -> None:
    for args in (
        ("topic", "describe", topic),
        ("topic", "delete", topic),
        ("topic", "alter", topic, "--partitions", "4"),
        ("topic", "config", topic, "--set", "retention.ms=1000"),
        ("consume", topic, "--from-beginning"),
    ):
        result = kops(*args)
        assert result.returncode == 1, args
        assert result.stderr.strip() == f"error: unknown topic '{topic}'", (args, result.stderr)
    produced = kops("produce", topic, "--no-create", input="x\n")  # else the broker creates it
    assert produced.returncode == 1
    assert produced.stderr.strip().splitlines()[-1].startswith(f"error: unknown topic '{topic}'")


def test_alter_partitions(kops: Kops, topic: str) -> None:
    assert kops("topic", "create", topic, "-p", "2").returncode == 0
    result = kops("topic", "alter", topic, "--partitions", "5")
    assert result.returncode == 0, result.stderr
    assert len(_describe(kops, topic)["partitions"]) == 5

    shrink = kops("topic", "alter", topic, "--partitions", "3")
    assert shrink.returncode == 1
    assert shrink.stderr.startswith("error: ")
    assert len(shrink.stderr.strip().splitlines()) == 1


def test_config_set_and_delete(kops: Kops, topic: str) -> None:
    assert kops("topic", "create", topic, "-p", "1").returncode == 0
    result = kops(
        "topic", "config", topic, "--set", "retention.ms=120000", "--set", "segment.ms=600000"
    )
    assert result.returncode == 0, result.stderr
    configs = _describe(kops, topic)["configs"]
    assert configs["retention.ms"]["value"] == "120000"
    assert configs["segment.ms"]["value"] == "600000"

    result = kops("topic", "config", topic, "--delete", "segment.ms")
    assert result.returncode == 0, result.stderr
    configs = _describe(kops, topic)["configs"]
    assert configs["retention.ms"]["value"] == "120000"
    segment = configs.get("segment.ms")
    assert segment is None or segment["value"] != "600000"


def test_list_hides_internal_topics_unless_all(kops: Kops, topic: str) -> None:
    # Using a group makes a real broker create __consumer_offsets.
    assert kops("topic", "create", topic, "-p", "1").returncode == 0
    assert kops("produce", topic, input="x\n").returncode == 0
    consumed = kops("consume", topic, "--group", f"g-{topic}", "--from-beginning", "-n", "1")
    assert consumed.returncode == 0, consumed.stderr

    names = {t["name"] for t in json.loads(kops("topic", "list", "--json").stdout)}
    assert not any(n.startswith("__") for n in names)
    everything = json.loads(kops("topic", "list", "--all", "--json").stdout)
    internal = [t for t in everything if t["internal"]]
    assert all(t["name"].startswith("__") for t in internal)
    assert {t["name"] for t in everything} >= names


def test_create_without_partitions_uses_the_broker_defaults(run_kops, tmp_path, topic: str) -> None:
    # Kafka's tools leave --partitions and --replication-factor to the broker's
    # num.partitions and default.replication.factor.
    from kops.testing import run_broker

    with run_broker(tmp_path, config={"num.partitions": "3"}) as bootstrap:
        result = run_kops("topic", "create", topic, "--json", bootstrap=bootstrap)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["partitions"] == 3
        described = run_kops("topic", "describe", topic, "--json", bootstrap=bootstrap)
        assert described.returncode == 0, described.stderr
        assert len(json.loads(described.stdout)["partitions"]) == 3
        human = run_kops("topic", "create", f"{topic}-2", bootstrap=bootstrap)
        assert human.returncode == 0, human.stderr
        assert f"created topic {topic}-2 with 3 partitions" in human.stderr
