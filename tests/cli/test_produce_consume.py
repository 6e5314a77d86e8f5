"""``kops produce`` and ``kops consume`` against a real broker, through the real entry point."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable

from confluent_kafka import Producer

from kops import admin
from kops.testing import wait_until

Kops = Callable[..., subprocess.CompletedProcess[str]]


def _create(kops: Kops, topic: str, partitions: int = 1) -> None:
    result = kops("topic", "create", topic, "--partitions", str(partitions))
    assert result.returncode == 0, result.stderr


def _consume_json(kops: Kops, topic: str, *args: str) -> list[dict]:
    result = kops("consume", topic, "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _produce_raw(bootstrap: str, topic: str, records: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    failures: list[object] = []
    for rec in records:
        producer.produce(
            topic,
            on_delivery=lambda err, _msg: err is not None and failures.append(err),
            **rec,
        )
        producer.flush(10)  # one record per batch
    assert producer.flush(10) == 0
    assert not failures, failures


def test_key_separator_and_headers_round_trip(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    before = int(time.time() * 1000)
    produced = kops(
        "produce",
        topic,
        "--key-separator",
        ":",
        "--header",
        "trace=abc",
        "--header",
        "source=x=y",
        input="k1:v1\nk2:hello: world\nk3:\n",
    )
    after = int(time.time() * 1000)
    assert produced.returncode == 0, produced.stderr
    assert produced.stderr.strip() == f"produced 3 records to {topic}"

    records = _consume_json(kops, topic, "--from-beginning", "--exit-at-end")
    assert [(r["key"], r["value"]) for r in records] == [
        ("k1", "v1"),
        ("k2", "hello: world"),
        ("k3", ""),
    ]
    for offset, rec in enumerate(records):
        assert rec["topic"] == topic
        assert rec["partition"] == 0
        assert rec["offset"] == offset
        assert before - 1000 <= rec["timestamp"] <= after + 1000
        assert rec["timestamp_type"] == "create_time"
        assert rec["key_encoding"] == "utf-8"
        assert rec["value_encoding"] == "utf-8"
        assert rec["headers"] == [
            {"key": "trace", "value": "abc", "value_encoding": "utf-8"},
            {"key": "source", "value": "x=y", "value_encoding": "utf-8"},
        ]
        assert set(rec) == {
            "topic",
            "partition",
            "offset",
            "timestamp",
            "timestamp_type",
            "key",
            "key_encoding",
            "headers",
            "value",
            "value_encoding",
        }

    human = kops("consume", topic, "--from-beginning", "--exit-at-end")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("offset=1 partition=0 timestamp=")
    assert "key=k2 headers=trace=abc,source=x=y value=hello: world" in lines[1]
    assert human.stderr.strip() == f"consumed 3 records from {topic}"


def test_fixed_key_and_partition(kops: Kops, topic: str) -> None:
    _create(kops, topic, partitions=3)
    produced = kops("produce", topic, "--key", "K", "--partition", "2", input="a\nb\n")
    assert produced.returncode == 0, produced.stderr

    on_two = _consume_json(kops, topic, "--from-beginning", "-e", "--partition", "2")
    assert [(r["partition"], r["offset"], r["key"], r["value"]) for r in on_two] == [
        (2, 0, "K", "a"),
        (2, 1, "K", "b"),
    ]
    assert all(r["headers"] == [] for r in on_two)
    others = _consume_json(kops, topic, "--from-beginning", "-e", "--partition", "0,1")
    assert others == []
    both = _consume_json(kops, topic, "--from-beginning", "-e", "-p", "0", "-p", "2")
    assert len(both) == 2

    missing = kops("consume", topic, "--partition", "7")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and "partition 7" in missing.stderr
    bad = kops("produce", topic, "--partition", "3", input="x\n")
    assert bad.returncode == 1
    assert "partition 3 does not exist" in bad.stderr


def test_keyless_lines_and_null_key(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    assert kops("produce", topic, input="plain\n\nlast-no-newline").returncode == 0
    records = _consume_json(kops, topic, "--from-beginning", "-e")
    assert [r["value"] for r in records] == ["plain", "", "last-no-newline"]
    assert all(r["key"] is None and r["key_encoding"] is None for r in records)


def test_non_utf8_bytes_are_base64_in_json(kafka_broker: str, kops: Kops, topic: str) -> None:
    _create(kops, topic)
    _produce_raw(
        kafka_broker,
        topic,
        [{"key": b"\xff\x00k", "value": b"\xfe\xfd", "headers": [("h", b"\x80")]}],
    )
    (rec,) = _consume_json(kops, topic, "--from-beginning", "-e")
    assert rec["key_encoding"] == "base64"
    assert base64.b64decode(rec["key"]) == b"\xff\x00k"
    assert rec["value_encoding"] == "base64"
    assert base64.b64decode(rec["value"]) == b"\xfe\xfd"
    assert rec["headers"] == [
        {"key": "h", "value": base64.b64encode(b"\x80").decode(), "value_encoding": "base64"}
    ]
    human = kops("consume", topic, "--from-beginning", "-e")
    assert "value=\ufffd\ufffd" in human.stdout


def test_offset_positive_negative_and_out_of_range(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    assert kops("produce", topic, input="r0\nr1\nr2\nr3\nr4\n").returncode == 0

    records = _consume_json(kops, topic, "--offset", "2", "-e")
    assert [(r["offset"], r["value"]) for r in records] == [(2, "r2"), (3, "r3"), (4, "r4")]
    tail = _consume_json(kops, topic, "--offset", "-2", "-e")
    assert [r["value"] for r in tail] == ["r3", "r4"]
    more_than_all = _consume_json(kops, topic, "--offset", "-50", "-e")
    assert len(more_than_all) == 5

    beyond = kops("consume", topic, "--offset", "99")
    assert beyond.returncode == 1
    assert beyond.stderr.strip().startswith("error: offset 99 is out of range")
    assert len(beyond.stderr.strip().splitlines()) == 1


def test_max_messages(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    assert kops("produce", topic, input="a\nb\nc\nd\ne\n").returncode == 0
    started = time.monotonic()
    records = _consume_json(kops, topic, "--from-beginning", "--max-messages", "2")
    assert time.monotonic() - started < 15
    assert [r["value"] for r in records] == ["a", "b"]


def test_timestamp_starts_at_first_record_at_or_after(
    kafka_broker: str, kops: Kops, topic: str
) -> None:
    _create(kops, topic)
    base = 1_700_000_000_000  # 2023-11-14T22:13:20Z
    _produce_raw(
        kafka_broker,
        topic,
        [{"value": f"v{i}".encode(), "timestamp": base + i * 60_000} for i in range(5)],
    )
    exact = _consume_json(kops, topic, "--timestamp", str(base + 2 * 60_000), "-e")
    assert [r["value"] for r in exact] == ["v2", "v3", "v4"]
    assert exact[0]["timestamp"] == base + 2 * 60_000

    between = _consume_json(kops, topic, "--timestamp", "2023-11-14T22:15:30Z", "-e")
    assert [r["value"] for r in between] == ["v3", "v4"]
    with_offset = _consume_json(kops, topic, "--timestamp", "2023-11-14T23:14:00+01:00", "-e")
    assert [r["value"] for r in with_offset] == ["v1", "v2", "v3", "v4"]

    before_all = _consume_json(kops, topic, "--timestamp", "2020-01-01", "-e")
    assert len(before_all) == 5
    after_all = _consume_json(kops, topic, "--timestamp", "now", "-e")
    assert after_all == []


def test_timeout_stops_an_idle_consumer(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    started = time.monotonic()
    result = kops("consume", topic, "--timeout", "1s")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == f"consumed 0 records from {topic}"
    assert elapsed < 10


def test_default_start_is_the_end(kafka_broker: str, kops: Kops, topic: str) -> None:
    _create(kops, topic)
    assert kops("produce", topic, input="old-1\nold-2\n").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "consume", topic, "--json", "-n", "1", "-b", kafka_broker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Keep producing until the consumer (which starts at the end) sees something.
        def consumer_saw_one() -> bool:
            _produce_raw(kafka_broker, topic, [{"value": b"new"}])
            return proc.poll() is not None

        wait_until(consumer_saw_one, 30, interval=0.25, message="the consumer to see a record")
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert rec["value"] == "new"
    assert rec["offset"] >= 2


def test_group_commits_and_resumes(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    assert kops("produce", topic, input="a\nb\nc\nd\n").returncode == 0
    group = f"g-{topic}"
    first = _consume_json(kops, topic, "--group", group, "--from-beginning", "-n", "2")
    assert [r["value"] for r in first] == ["a", "b"]
    rest = _consume_json(kops, topic, "--group", group, "--exit-at-end")
    assert [r["value"] for r in rest] == ["c", "d"]

    # Without a group nothing is committed: a second read sees the same records.
    again = _consume_json(kops, topic, "--from-beginning", "-n", "2")
    assert [r["value"] for r in again] == ["a", "b"]


def test_missing_key_separator_fails_after_sending_earlier_lines(kops: Kops, topic: str) -> None:
    _create(kops, topic)
    result = kops("produce", topic, "-K", "=", input="a=1\nno-separator\nc=3\n")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"produced 1 record to {topic}"
    assert lines[-1].startswith("error: line 2: no key separator '='")
    assert "Traceback" not in result.stderr
    records = _consume_json(kops, topic, "--from-beginning", "-e")
    assert [(r["key"], r["value"]) for r in records] == [("a", "1")]


def _end_offsets(bootstrap: str, topic: str) -> int:
    return sum(p.end_offset or 0 for p in admin.describe_topic(bootstrap, topic).partitions)


def test_full_producer_queue_drops_nothing(kafka_broker: str, kops: Kops, topic: str) -> None:
    """A local queue of 10 records and 2,000 lines: every line is waited in, none dropped."""
    _create(kops, topic, 2)
    lines = "".join(f"line-{i}\n" for i in range(2000))
    res = kops("produce", topic, "-X", "queue.buffering.max.messages=10", input=lines)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == f"produced 2000 records to {topic}"
    assert _end_offsets(kafka_broker, topic) == 2000
    records = _consume_json(kops, topic, "--from-beginning", "--exit-at-end")
    assert sorted(r["value"] for r in records) == sorted(f"line-{i}" for i in range(2000))


def test_failed_deliveries_are_counted_and_exit_1(kops: Kops, topic: str) -> None:
    """Records the broker refuses (larger than the topic's max.message.bytes) are counted."""
    res = kops("topic", "create", topic, "--partitions", "1", "--config", "max.message.bytes=2000")
    assert res.returncode == 0, res.stderr
    big = "x" * 5000
    lines = f"a\n{big}\nb\n{big}\nc\n"
    res = kops("produce", topic, "-X", "linger.ms=0", "-X", "batch.num.messages=1", input=lines)
    assert res.returncode == 1
    assert "2 of 5 records not delivered" in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")


def test_consume_refuses_an_empty_group(kops, topic: str) -> None:
    result = kops("consume", topic, "--group", "", "--max-messages", "1", "--timeout", "1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--group" in lines[0]
