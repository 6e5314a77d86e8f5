"""The retry ladder end to end on the bundled broker: consumer, delay forwarders, DLQ.

The ladder is shortened to 1s, 2s (tiers of their own, forwarded by the delay library's
forwarders running in a thread), so a record that always fails takes ~3 s to reach the DLQ.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from kops.admin import create_topic
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers
from kops.recipes.delay.forwarder import ForwarderOptions
from kops.recipes.dlq import read_dead_letters
from kops.recipes.retry import DeserializationError, Outcome, RetryPolicy, run_retrying_consumer
from tests.recipes.streams import forwarders_running


@pytest.fixture
def tiers(kafka_broker: str) -> Iterator[DelayTiers]:
    """Short tiers of this test's own, with their forwarders running."""
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s", template=f"retry-{tag}.delay.{{tier}}")
    opts = ForwarderOptions(
        tiers=tiers, group=f"fwd-{tag}", cancel_topic=None, stats_topic=None, stats_interval=0
    )
    with forwarders_running(kafka_broker, opts):
        yield tiers


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        p.produce(topic, value, key=key, headers=[("origin", b"test")])
    assert p.flush(10) == 0


def test_ladder_dlq_headers_fatal_and_count(kafka_broker: str, tiers: DelayTiers) -> None:
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, partitions=2)
    modes = ["ok"] * 12 + ["flaky"] * 4 + ["always"] * 3 + ["fatal"] * 2 + ["garbage"] * 2
    records = []
    for i, mode in enumerate(modes):
        value = b"\xff not json" if mode == "garbage" else json.dumps({"mode": mode}).encode()
        records.append((f"k{i:02d}-{mode}".encode(), value))
    produce(kafka_broker, topic, records)

    seen: dict[bytes, list[dict[str, Any]]] = defaultdict(list)

    def handle(msg: Any) -> None:
        hs = msg.headers() or []
        seen[msg.key()].append(
            {
                "attempt": h.get(hs, h.RETRY_ATTEMPT),
                "at": time.time() * 1000,
                "due": h.get(hs, h.DELAY_DUE_MS),
                "sent": h.get(hs, h.DELAY_SENT_MS),
            }
        )
        try:
            mode = json.loads(msg.value())["mode"]
        except ValueError as exc:
            raise DeserializationError("not an order") from exc
        if mode == "fatal":
            raise DeserializationError("schema mismatch")
        if mode == "always" or (mode == "flaky" and h.get(hs, h.RETRY_ATTEMPT) is None):
            raise ConnectionError(f"downstream unavailable for {msg.key()!r}")

    finished: set[bytes] = set()
    stop = threading.Event()

    def on_outcome(msg: Any, outcome: Outcome) -> None:
        if outcome in (Outcome.HANDLED, Outcome.DEAD_LETTERED):
            finished.add(msg.key())
        if len(finished) == len(records):
            stop.set()

    deadline = threading.Timer(40, stop.set)
    deadline.daemon = True
    deadline.start()
    policy = RetryPolicy(attempts=2, backoff=0.01, ladder=(1.0, 2.0))
    stats = run_retrying_consumer(
        kafka_broker, [topic], handle, group=f"g-{topic}", policy=policy, tiers=tiers,
        stop=stop, on_outcome=on_outcome,
    )  # fmt: skip
    deadline.cancel()
    assert len(finished) == len(records), stats

    dead = {dl.record.key: dl for dl in read_dead_letters_all(kafka_broker, f"{topic}.dlq")}
    handled_ok = {k for k in finished if k not in dead}
    # Count check: every record is handled successfully or dead-lettered, none twice.
    assert len(handled_ok) + len(dead) == len(records)
    assert {k.decode().split("-")[1] for k in dead} == {"always", "fatal", "garbage"}
    assert stats.dead_lettered == len(dead) == 7
    assert stats.handled == len(handled_ok) == 16

    # Non-blocking: the first delivery of every record happened before any retry tier
    # could have returned (no partition waited for a failing record).
    first_round = [calls[0]["at"] for calls in seen.values()]
    assert max(first_round) - min(first_round) < 1000

    for key, dl in dead.items():
        kind = key.decode().split("-")[1]
        calls = seen[key]
        if kind == "always":
            # Ladder: first delivery, then via the 1 s tier, then via the 2 s tier.
            assert [c["attempt"] for c in calls] == [None, None, "1", "1", "2", "2"]
            via_1s, via_2s = calls[2], calls[4]
            assert int(via_1s["due"]) - int(via_1s["sent"]) == 1000
            assert int(via_2s["due"]) - int(via_2s["sent"]) == 2000
            for c in (via_1s, via_2s):
                assert c["at"] >= int(c["due"])  # never early
            assert dl.attempts == 3 and dl.reason == "retries-exhausted"
            assert dl.exception_class == "ConnectionError"
        else:
            assert len(calls) == 1, "fatal errors skip every retry"
            assert dl.attempts == 1 and dl.reason == "fatal"
        assert dl.format == "kops" and dl.original_topic == topic
        assert dl.group == f"g-{topic}"
        assert dl.original_partition in (0, 1) and dl.original_offset is not None
        assert dl.original_timestamp_ms is not None and dl.stacktrace
        assert dl.first_failure_ms is not None and dl.failed_at_ms is not None
        assert dl.first_failure_ms <= dl.failed_at_ms
        assert dl.record.value == dict(records)[key]
        assert ("origin", b"test") in dl.record.headers
    for key, calls in seen.items():
        if b"flaky" in key:
            assert [c["attempt"] for c in calls] == [None, None, "1"]


def read_dead_letters_all(bootstrap: str, topic: str) -> list:
    return list(read_dead_letters(bootstrap, topic))


def test_retry_on_shared_topic_is_for_the_failing_group_only(
    kafka_broker: str, tiers: DelayTiers
) -> None:
    topic = f"shared-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, partitions=1)
    produce(kafka_broker, topic, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    calls: dict[str, list[bytes]] = {"billing": [], "audit": []}
    outcomes: dict[str, list[Outcome]] = {"billing": [], "audit": []}
    stops = {"billing": threading.Event(), "audit": threading.Event()}

    def handler(group: str):
        def handle(msg: Any) -> None:
            calls[group].append(msg.key())
            if (
                group == "billing"
                and msg.key() == b"b"
                and not h.get(msg.headers(), h.RETRY_ATTEMPT)
            ):
                raise ConnectionError("billing backend down")

        return handle

    def watch(group: str, done: int):
        def on_outcome(msg: Any, outcome: Outcome) -> None:
            outcomes[group].append(outcome)
            if len(outcomes[group]) >= done:
                stops[group].set()

        return on_outcome

    threads = [
        threading.Thread(
            target=run_retrying_consumer,
            args=(kafka_broker, [topic], handler(group)),
            kwargs={
                "group": f"{group}-{topic}",
                "policy": RetryPolicy(attempts=1, ladder=(1.0,)),
                "tiers": tiers,
                "stop": stops[group],
                "on_outcome": watch(group, 4),
            },
        )
        for group in ("billing", "audit")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    # billing: a, b (fails), c, then b again from the 1 s tier.
    assert calls["billing"] == [b"a", b"b", b"c", b"b"]
    assert outcomes["billing"].count(Outcome.RETRY_SCHEDULED) == 1
    # audit handled each record once and skipped billing's retry.
    assert calls["audit"] == [b"a", b"b", b"c"]
    assert outcomes["audit"] == [Outcome.HANDLED] * 3 + [Outcome.SKIPPED]
