"""`kops doctor` end to end: the real CLI against a real broker."""

from __future__ import annotations

import json

from kops.admin import create_topic
from kops.pytest_plugin import requires_bundled_broker

GOOD = ("-X", "acks=all", "-X", "enable.idempotence=true")


def rules(result) -> dict[str, dict]:
    return {f["rule"]: f for f in json.loads(result.stdout)}


def test_acks_1_is_an_error_exit_1(kops, kafka_broker, topic):
    create_topic(kafka_broker, topic, 1)
    r = kops("doctor", "--topic", topic, "-X", "acks=1", "--json")
    assert r.returncode == 1, r.stderr
    found = rules(r)
    assert found["producer-acks"]["severity"] == "error"
    assert found["producer-acks"]["subject"] == "acks=1"
    assert "acks=all" in found["producer-acks"]["fix"]
    assert "client config: producer" in r.stderr


@requires_bundled_broker  # the bundled broker's own settings are clean on one broker
def test_good_settings_exit_0(kops, kafka_broker, topic):
    create_topic(kafka_broker, topic, 3)
    # RF 1 is all a one-broker cluster can have: a warning, skipped here by its id
    r = kops("doctor", "--topic", topic, *GOOD, "--ignore", "replication-factor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no problems found" in r.stdout
    assert "checked 1 topic on a cluster of 1 broker" in r.stdout
    r = kops("doctor", "--topic", topic, *GOOD, "--ignore", "replication-factor", "--json")
    assert (r.returncode, json.loads(r.stdout)) == (0, [])
    # without --ignore the single-broker warning alone still fails the check
    r = kops("doctor", "--topic", topic, *GOOD, "--json")
    assert r.returncode == 1
    assert [(f["rule"], f["severity"]) for f in json.loads(r.stdout)] == [
        ("replication-factor", "warning")
    ]


def test_table_shows_problem_and_fix(kops, kafka_broker, topic):
    dlq = f"{topic}.dlq"
    create_topic(kafka_broker, dlq, 1, config={"retention.ms": "3600000"})
    r = kops("doctor", "--topic", dlq, *GOOD)
    assert r.returncode == 1
    assert "error" in r.stdout and "dlq-retention" in r.stdout
    # the fix column (wrapped by the table, so look for its words)
    assert "retention.ms=604800000" in r.stdout and "kops topic config" in r.stdout
    # a shorter replay window makes the same retention enough
    r = kops("doctor", "--topic", dlq, *GOOD, "--dlq-replay-window", "1h", "--json")
    assert "dlq-retention" not in rules(r)


def test_client_config_file_and_x_override(kops, kafka_broker, topic, tmp_path):
    create_topic(kafka_broker, topic, 1)
    props = tmp_path / "consumer.properties"
    props.write_text("# billing consumer\ngroup.id=billing\nacks=1\nkey.deserializer=org.X\n")
    r = kops("doctor", "--topic", topic, "--client-config-file", str(props), "--json")
    found = rules(r)
    assert r.returncode == 1
    assert found["consumer-auto-commit"]["severity"] == "error"
    assert "producer-acks" in found
    # -X wins over the file, and the file's Java-only keys never reach the admin client
    r = kops(
        "doctor", "--topic", topic, "-F", str(props), "-X", "acks=all",
        "-X", "enable.auto.commit=false", "-X", "enable.idempotence=true", "--json",
    )  # fmt: skip
    found = rules(r)
    assert "producer-acks" not in found and "consumer-auto-commit" not in found


def test_sweep_recommendation(kops, kafka_broker, topic, tmp_path):
    create_topic(kafka_broker, topic, 2)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"points": [], "recommendation": {"partitions": 8}}))
    r = kops("doctor", "--topic", topic, "--sweep", str(sweep), *GOOD, "--json")
    assert r.returncode == 1
    assert "--partitions 8" in rules(r)["sweep-partitions"]["fix"]
    r = kops("doctor", "--sweep", str(sweep), *GOOD)
    assert r.returncode == 1 and "--sweep needs --topic" in r.stderr
    sweep.write_text(json.dumps({"points": [], "recommendation": {"partitions": None}}))
    r = kops("doctor", "--topic", topic, "--sweep", str(sweep))
    assert r.returncode == 1 and "--target-throughput" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_topic_and_unreachable_are_one_line_errors(kops, run_kops):
    r = kops("doctor", "--topic", "doctor-no-such-topic")
    assert r.returncode == 1 and r.stderr.startswith("error: unknown topic")
    r = run_kops("doctor", bootstrap="127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr.startswith("error: cannot reach Kafka") and len(r.stderr.splitlines()) == 1
