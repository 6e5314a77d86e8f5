"""``kops txn list/describe/abort`` against the real broker and a real transactional producer:
the operator finds a hanging transaction and aborts it, which unblocks read_committed readers."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Producer

from kops import admin
from kops.testing import wait_until

Kops = Callable[..., subprocess.CompletedProcess[str]]


def _committed_values(bootstrap: str, topic: str, want: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        wait_until(
            lambda: (
                got.extend(m.value() for m in consumer.consume(10, 0.2) if not m.error())
                or len(got) >= want
            ),
            30,
            message=f"{want} committed records",
        )
    finally:
        consumer.close()
    return got


def test_a_hanging_transaction_is_listed_described_and_aborted(
    kops: Kops, kafka_broker: str
) -> None:
    topic = f"txcli-{uuid.uuid4().hex[:8]}"
    transactional_id = f"hanging-{topic}"
    admin.create_topic(kafka_broker, topic, 1)
    stuck = Producer({"bootstrap.servers": kafka_broker, "transactional.id": transactional_id})
    stuck.init_transactions(30)
    stuck.begin_transaction()
    stuck.produce(topic, b"never", partition=0)
    assert stuck.flush(30) == 0
    plain = Producer({"bootstrap.servers": kafka_broker})
    plain.produce(topic, b"behind it", partition=0)
    assert plain.flush(30) == 0

    listed = kops("txn", "list", "--state", "ongoing", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [t for t in json.loads(listed.stdout) if t["transactional_id"] == transactional_id]
    assert len(mine) == 1 and mine[0]["state"] == "Ongoing"

    described = kops("txn", "describe", transactional_id, "--json")
    assert described.returncode == 0, described.stderr
    detail = json.loads(described.stdout)
    assert detail["state"] == "Ongoing" and detail["start_ms"] is not None
    assert detail["partitions"] == [{"topic": topic, "partition": 0}]
    epoch = detail["producer_epoch"]

    aborted = kops("txn", "abort", transactional_id, "--json")
    assert aborted.returncode == 0, aborted.stderr
    after = json.loads(aborted.stdout)
    assert after["state"] in ("Empty", "CompleteAbort") and after["producer_epoch"] > epoch
    assert after["partitions"] == []
    # The record behind the aborted transaction is readable; the aborted one never is.
    assert _committed_values(kafka_broker, topic, 1) == [b"behind it"]
    try:
        stuck.commit_transaction(10)
        raise AssertionError("the fenced producer committed")
    except KafkaException as exc:
        assert exc.args[0].fatal() or exc.args[0].txn_requires_abort()


def test_unknown_ids_and_states_are_one_line_errors(kops: Kops) -> None:
    missing = kops("txn", "describe", f"no-such-{uuid.uuid4().hex[:6]}")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("error:") and "no transactional id" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_state = kops("txn", "list", "--state", "Stuck")
    assert bad_state.returncode == 1 and "Stuck" in bad_state.stderr
    assert "Traceback" not in bad_state.stderr
    empty = kops("txn", "list", "--producer-id", "-5", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
