"""Issue #15, the first ten minutes: produce follows the broker on missing topics, and says
which limit a too-large record hit."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest

from kops import admin
from kops.client import UnknownTopic
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import run_broker

Kops = Callable[..., subprocess.CompletedProcess[str]]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    return lines[0]


def _exists(bootstrap: str, topic: str) -> bool:
    try:
        admin.describe_topic(bootstrap, topic)
    except UnknownTopic:
        return False
    return True


@pytest.fixture(scope="module")
def strict_broker() -> Iterator[str]:
    """A broker that does not create topics on first use."""
    with run_broker(config={"auto.create.topics.enable": "false"}) as bootstrap:
        yield bootstrap


@requires_bundled_broker
def test_produce_to_a_missing_topic_lets_the_broker_create_it(kops: Kops, topic: str) -> None:
    # The bundled broker auto-creates (auto.create.topics.enable=true, Kafka's default).
    res = kops("produce", topic, input="hello\n")
    assert res.returncode == 0, res.stderr
    assert f"topic {topic} did not exist: the broker created it" in res.stderr
    assert f"produced 1 record to {topic}" in res.stderr
    got = kops("consume", topic, "--from-beginning", "--exit-at-end", "--json")
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["value"] for line in got.stdout.splitlines()] == ["hello"]

    again = kops("produce", topic, input="again\n")  # it exists now: nothing to say
    assert again.returncode == 0 and "did not exist" not in again.stderr


def test_no_create_refuses_a_missing_topic(kops: Kops, kafka_broker: str, topic: str) -> None:
    res = kops("produce", topic, "--no-create", input="hello\n")
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert line.startswith(f"error: unknown topic '{topic}'") and "--no-create" in line
    assert f"kops topic create {topic}" in line
    assert not _exists(kafka_broker, topic)
    assert "--create / --no-create" in kops("produce", "--help").stdout


def test_a_broker_that_does_not_auto_create_is_named(
    run_kops: Kops, strict_broker: str, topic: str
) -> None:
    res = run_kops("produce", topic, bootstrap=strict_broker, input="hello\n")
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert line.startswith(f"error: unknown topic '{topic}'")
    assert "does not create topics on first use (auto.create.topics.enable=false)" in line
    assert f"`kops topic create {topic}`" in line
    assert not _exists(strict_broker, topic)

    # The way out the message names works, and then produce does too.
    created = run_kops("topic", "create", topic, bootstrap=strict_broker)
    assert created.returncode == 0, created.stderr
    res = run_kops("produce", topic, bootstrap=strict_broker, input="hello\n")
    assert res.returncode == 0, res.stderr
    assert "did not exist" not in res.stderr


@pytest.mark.parametrize("strict", [False, True], ids=["auto-create broker", "strict broker"])
def test_delay_send_still_refuses_a_missing_target(
    run_kops: Kops, kafka_broker: str, strict_broker: str, topic: str, strict: bool
) -> None:
    """Issue #12 point 2: a delayed record is checked at send time, not created."""
    bootstrap = strict_broker if strict else kafka_broker
    res = run_kops(
        "delay", "send", topic, "--in", "1h", "--tiers", "1s", "--template", f"{topic}.{{tier}}",
        bootstrap=bootstrap, input="x\n",
    )  # fmt: skip
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert f"unknown topic '{topic}'" in line and "--no-check-target" in line
    assert f"kops topic create {topic}" in line
    assert not _exists(bootstrap, topic)


def test_a_record_over_the_client_limit_names_message_max_bytes(
    kops: Kops, kafka_broker: str, topic: str
) -> None:
    admin.create_topic(kafka_broker, topic, 1)
    big = "x" * 1_200_000  # over librdkafka's default message.max.bytes (1,000,000)
    res = kops("produce", topic, input=f"small\n{big}\nafter\n")
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert line.startswith("error: line 2: a record of 1200000 bytes")
    assert "message.max.bytes=1000000" in line and "-X message.max.bytes=N" in line
    assert "the broker never saw it" in line
    assert "KafkaException" not in line and "Broker:" not in line

    # Raising the client's limit as told gets the record past the client, to the broker,
    # whose own limit (1048588 bytes by default) it is over too: the error now says so.
    raised = kops("produce", topic, "-X", "message.max.bytes=2000000", input=f"{big}\n")
    assert raised.returncode == 1
    last = raised.stderr.strip().splitlines()[-1]
    assert "the broker refused" in last and "max.message.bytes=1048588" in last, last
    assert "-X message.max.bytes" not in last

    fixed = kops("topic", "config", topic, "--set", "max.message.bytes=2000000")
    assert fixed.returncode == 0, fixed.stderr
    raised = kops("produce", topic, "-X", "message.max.bytes=2000000", input=f"{big}\n")
    assert raised.returncode == 0, raised.stderr


def test_a_record_over_the_topic_limit_names_max_message_bytes(
    kops: Kops, kafka_broker: str, topic: str
) -> None:
    admin.create_topic(kafka_broker, topic, 1, config={"max.message.bytes": "1000"})
    res = kops("produce", topic, input="y" * 5000 + "\n")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 1 records not delivered: the broker refused")
    assert "MESSAGE_TOO_LARGE" in last and "max.message.bytes=1000" in last
    assert f"kops topic config {topic} --set max.message.bytes=N" in last
    assert "message.max.bytes=1000000" not in last  # not the client's limit

    fixed = kops("topic", "config", topic, "--set", "max.message.bytes=10000")
    assert fixed.returncode == 0, fixed.stderr
    res = kops("produce", topic, input="y" * 5000 + "\n")
    assert res.returncode == 0, res.stderr
