"""``kops delay send/cancel/status`` against the bundled broker, with forwarders running."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer

from kops import admin
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.testing import wait_until


@pytest.fixture
def tier_args(kafka_broker: str) -> Iterator[list[str]]:
    """Forwarders for private tiers 1s,2s; yields the CLI options naming them (send and
    cancel ignore --group, so the fixture's options end with it: drop it with [:-2])."""
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s", template=f"c{tag}.{{tier}}")
    fw = DelayForwarders(
        kafka_broker, ForwarderOptions(tiers=tiers, group=f"cli-{tag}", stats_interval=0.5)
    )
    stop = threading.Event()
    thread = threading.Thread(target=fw.run, args=(stop,), daemon=True)
    thread.start()
    assert fw.wait_assigned(30)
    try:
        yield ["--tiers", "1s,2s", "--template", tiers.template, "--group", f"cli-{tag}"]
    finally:
        stop.set()
        thread.join(30)


def _read_all(bootstrap: str, topic: str, expect: int, timeout: float) -> list[object]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(out) < expect:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    return out


def test_send_cancel_status(kops, kafka_broker: str, topic: str, tier_args: list[str]) -> None:
    tiers = tier_args[:-2]
    admin.create_topic(kafka_broker, topic, 1)
    res = kops(
        "delay", "send", topic, "--in", "5s", "--key", "k1", "--header", "src=cli", *tiers,
        input="first\nsecond\nthird\n",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    ids = res.stdout.split()
    assert len(ids) == 3 and "scheduled 3 records" in res.stderr

    res = kops("delay", "cancel", ids[1])
    assert res.returncode == 0, res.stderr
    assert f"cancelled {ids[1]}" in res.stderr

    # The cancel is acknowledged well before the records are due (5 s; two CLI start-ups on a
    # loaded machine can take a few seconds), so it must win.
    msgs = _read_all(kafka_broker, topic, 3, timeout=9)
    assert sorted(m.value() for m in msgs) == [b"first", b"third"]  # type: ignore[attr-defined]
    for m in msgs:
        hdrs = m.headers()  # type: ignore[attr-defined]
        assert m.key() == b"k1" and ("src", b"cli") in hdrs  # type: ignore[attr-defined]
        assert m.timestamp()[1] >= int(h.get(hdrs, h.DELAY_DUE_MS) or 0)  # type: ignore[attr-defined]

    res = kops("delay", "send", topic, "--at", "2999-01-01T00:00:00Z", *tiers, input="x\n")
    assert res.returncode == 1 and "longer than the maximum" in res.stderr

    res = kops("delay", "send", topic, "--in", "30s", "--json", *tiers, input="later\n")
    assert res.returncode == 0 and len(json.loads(res.stdout)["message_ids"]) == 1

    rows: dict = {}

    def delivered_two() -> bool:  # the forwarders publish stats every 0.5 s
        res = kops("delay", "status", "--json", *tier_args)
        assert res.returncode == 0, res.stderr
        rows.update({r["tier"]: r for r in json.loads(res.stdout)})
        return rows["1s"]["delivered"] >= 2

    wait_until(delivered_two, 15, interval=0.3, message="status to count 2 deliveries")
    assert set(rows) == {"1s", "2s"}
    assert rows["2s"]["pending"] == 1 and rows["2s"]["oldest_due_ms"] > time.time() * 1000
    assert rows["1s"]["delivered"] == 2 and rows["1s"]["lateness_p99_ms"] is not None

    res = kops("delay", "status", *tier_args)
    assert res.returncode == 0 and "LATE P99 MS" in res.stdout and tier_args[3][:9] in res.stdout


def test_usage_errors_are_one_line(kops, topic: str) -> None:
    res = kops("delay", "send", topic, input="x\n")
    assert res.returncode == 1 and "exactly one of --in/--delay and --at" in res.stderr
    res = kops("delay", "send", topic, "--in", "5s", input="x\n")
    assert res.returncode == 1 and f"unknown topic {topic!r}" in res.stderr
    res = kops("delay", "send", topic, "--in", "5s", "--tiers", "0s", input="x\n")
    assert res.returncode == 1 and "tier" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    for sub in ("send", "status", "cancel", "worker"):
        res = kops("delay", sub, "--help")
        assert res.returncode == 0 and "--bootstrap" in res.stdout


def _ids_delivered(bootstrap: str, topic: str, expect: int, timeout: float) -> dict[str, int]:
    """message id -> copies seen in ``topic``; every copy checked: never early."""
    copies: dict[str, int] = {}
    for m in _read_all(bootstrap, topic, expect, timeout):
        hdrs = m.headers()  # type: ignore[attr-defined]
        assert m.timestamp()[1] >= int(h.get(hdrs, h.DELAY_DUE_MS) or 0), "delivered early"  # type: ignore[attr-defined]
        msg_id = h.get(hdrs, h.MESSAGE_ID) or ""
        copies[msg_id] = copies.get(msg_id, 0) + 1
    return copies


def test_send_with_a_full_producer_queue_drops_nothing(
    kops, kafka_broker: str, topic: str, tier_args: list[str]
) -> None:
    """2,000 lines through a local queue of 10 records: all 2,000 scheduled and delivered."""
    admin.create_topic(kafka_broker, topic, 2)
    lines = "".join(f"v{i}\n" for i in range(2000))
    res = kops(
        "delay", "send", topic, "--in", "1s", "-X", "queue.buffering.max.messages=10",
        *tier_args[:-2], input=lines,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    ids = res.stdout.split()
    assert len(ids) == 2000 and len(set(ids)) == 2000
    assert "scheduled 2000 records" in res.stderr
    copies = _ids_delivered(kafka_broker, topic, 2000, timeout=30)
    assert set(copies) == set(ids), f"{len(set(ids) - set(copies))} of 2000 records missing"


def test_at_is_a_point_in_time(kops, kafka_broker: str, topic: str, tier_args: list[str]) -> None:
    tiers = tier_args[:-2]
    admin.create_topic(kafka_broker, topic, 1)
    res = kops("delay", "send", topic, "--at", "1h", *tiers, input="x\n")
    assert res.returncode == 1
    assert "duration, not a point in time" in res.stderr and "--in 1h" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    past = int(time.time() * 1000) - 60_000
    res = kops("delay", "send", topic, "--at", str(past), *tiers, input="x\n")
    assert res.returncode == 1 and "in the past" in res.stderr and "--allow-past" in res.stderr
    res = kops("delay", "send", topic, "--at", "2020-01-01T00:00:00Z", *tiers, input="x\n")
    assert res.returncode == 1 and "in the past" in res.stderr

    res = kops(
        "delay", "send", topic, "--at", str(past), "--allow-past", *tiers, input="late\n"
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (late_id,) = res.stdout.split()

    due = int(time.time() * 1000) + 4000
    res = kops("delay", "send", topic, "--at", str(due), *tiers, input="epoch\n")
    assert res.returncode == 0, res.stderr
    (epoch_id,) = res.stdout.split()
    res = kops("delay", "send", topic, "--delay", "2s", *tiers, input="relative\n")
    assert res.returncode == 0, res.stderr
    (relative_id,) = res.stdout.split()

    msgs = {
        h.get(m.headers(), h.MESSAGE_ID): m  # type: ignore[attr-defined]
        for m in _read_all(kafka_broker, topic, 3, timeout=15)
    }
    assert set(msgs) == {late_id, epoch_id, relative_id}
    assert int(h.get(msgs[epoch_id].headers(), h.DELAY_DUE_MS) or 0) == due  # type: ignore[attr-defined]
    assert msgs[epoch_id].timestamp()[1] >= due  # type: ignore[attr-defined]


def test_missing_target_is_refused_unless_the_check_is_skipped(
    kops, topic: str, tier_args: list[str]
) -> None:
    tiers = tier_args[:-2]
    res = kops("delay", "send", topic, "--in", "1h", *tiers, input="x\n")
    assert res.returncode == 1 and f"unknown topic {topic!r}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = kops("delay", "send", topic, "--in", "1h", "--no-check-target", *tiers, input="x\n")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) == 1
