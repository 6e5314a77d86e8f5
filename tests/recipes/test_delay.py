"""Delay queue: tier ladder, send API, and forwarders against the bundled broker.

Tiers are shortened (1s, 2s, 5s) so cascading and lateness show in seconds. Each test gets
its own tier topics, cancel/stats topics and group, so they share the session broker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from kops import admin
from kops.recipes import headers as h
from kops.recipes.delay import (
    DEFAULT_TIERS,
    DelayTiers,
    cancel_delayed,
    ensure_tier_topics,
    format_tier,
    send_delayed,
)
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.recipes.delay.status import delay_status, percentiles
from kops.testing import wait_until

# --------------------------------------------------------------------------- no broker


def test_default_tiers_are_rocketmq_levels() -> None:
    tiers = DelayTiers.parse()
    assert [format_tier(s) for s in tiers.seconds] == list(DEFAULT_TIERS)
    assert tiers.topics()[0] == "kops.delay.1s"
    assert tiers.topics()[-1] == "kops.delay.2h"


def test_template_expresses_the_seed_style() -> None:
    tiers = DelayTiers.parse(template="topic_{tier}")
    assert tiers.topics()[:3] == ["topic_1s", "topic_5s", "topic_10s"]
    assert tiers.topic_for(7200) == "topic_2h"
    assert DelayTiers.parse("1s,1m", template="delay-{ms}").topics() == [
        "delay-1000",
        "delay-60000",
    ]


@pytest.mark.parametrize(
    ("remaining", "tier"),
    [(0.2, "1s"), (1, "1s"), (4.9, "1s"), (5, "5s"), (95, "1m"), (3599, "30m"), (10**5, "2h")],
)
def test_topic_for_is_largest_tier_not_longer(remaining: float, tier: str) -> None:
    assert DelayTiers.parse().topic_for(remaining) == f"kops.delay.{tier}"


def test_parse_normalises_sorts_and_validates() -> None:
    tiers = DelayTiers.parse(["60s", "500ms", "90s", "1m"])
    assert tiers.describe() == "500ms,1m,90s"
    assert DelayTiers.parse("2h,1s", max_delay="3d").max_delay == 3 * 86400
    assert DelayTiers.parse([1, 5.0]).seconds == (1.0, 5.0)
    for bad in ("", "0s", "abc"):
        with pytest.raises(ValueError):
            DelayTiers.parse(bad)
    with pytest.raises(ValueError, match="needs"):
        DelayTiers.parse("1s", template="fixed-name")
    with pytest.raises(ValueError, match="shorter than the largest"):
        DelayTiers.parse("1s,2h", max_delay=60)


class _FakeProducer:
    """Records what send_delayed produces; every topic "exists" (no broker here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict]] = []

    def produce(self, topic: str, value: bytes | None, **kwargs: object) -> None:
        self.sent.append((topic, value, kwargs))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})


def test_send_delayed_stamps_headers_and_keeps_the_record() -> None:
    fake = _FakeProducer()
    tiers = DelayTiers.parse("1s,5s")
    before = int(time.time() * 1000)
    msg_id = send_delayed(
        fake,
        "orders",
        b"v",
        key=b"k",
        headers=[("trace", b"abc")],
        delay=7,
        tiers=tiers,  # type: ignore[arg-type]
    )
    topic, value, kwargs = fake.sent[0]
    hdrs = kwargs["headers"]
    assert (topic, value, kwargs["key"]) == ("kops.delay.5s", b"v", b"k")
    assert ("trace", b"abc") in hdrs
    assert h.get(hdrs, h.MESSAGE_ID) == msg_id
    assert h.get(hdrs, h.DELAY_TARGET) == "orders"
    sent = int(h.get(hdrs, h.DELAY_SENT_MS) or 0)
    assert before <= sent and int(h.get(hdrs, h.DELAY_DUE_MS) or 0) == sent + 7000


def test_send_delayed_keeps_an_existing_message_id_and_accepts_deliver_at() -> None:
    fake = _FakeProducer()
    at = datetime.now(UTC) + timedelta(minutes=3)
    msg_id = send_delayed(
        fake,
        "t",
        None,
        headers=[(h.MESSAGE_ID, b"m-1")],
        deliver_at=at,  # type: ignore[arg-type]
    )
    assert msg_id == "m-1"
    topic, _value, kwargs = fake.sent[0]
    assert topic == "kops.delay.3m" or topic == "kops.delay.2m"  # 3m minus a few ms
    assert int(h.get(kwargs["headers"], h.DELAY_DUE_MS) or 0) >= int(at.timestamp() * 1000)
    assert [k for k, _ in kwargs["headers"]].count(h.MESSAGE_ID) == 1


def test_send_delayed_due_now_goes_to_target_and_limits_apply() -> None:
    fake = _FakeProducer()
    send_delayed(fake, "t", b"x", delay=0)  # type: ignore[arg-type]
    send_delayed(fake, "t", b"x", deliver_at=datetime(2000, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert [s[0] for s in fake.sent] == ["t", "t"]
    with pytest.raises(ValueError, match="longer than the maximum"):
        send_delayed(fake, "t", b"x", delay=timedelta(days=2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        send_delayed(fake, "t", b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        send_delayed(fake, "t", b"x", delay=-1)  # type: ignore[arg-type]


def test_percentiles_nearest_rank() -> None:
    assert percentiles([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}
    assert percentiles(range(1, 101)) == {"p50_ms": 50, "p99_ms": 99, "max_ms": 100}


# --------------------------------------------------------------------------- with broker


TARGET_PARTITIONS = 2


@dataclass
class DelayEnv:
    bootstrap: str
    tiers: DelayTiers
    options: ForwarderOptions
    target: str
    forwarders: DelayForwarders
    producer: Producer

    def send(self, value: bytes, **kwargs: object) -> str:
        return send_delayed(self.producer, self.target, value, tiers=self.tiers, **kwargs)  # type: ignore[arg-type]

    def collect(self, count: int, timeout: float) -> dict[str, tuple[int, int, int, bytes]]:
        """message id -> (due ms, record timestamp, wall-clock ms when received, value)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
            }
        )
        # The reader is not under test: assign() keeps a slow group join (tansu's) out of it.
        consumer.assign(
            [TopicPartition(self.target, p, OFFSET_BEGINNING) for p in range(TARGET_PARTITIONS)]
        )
        got: dict[str, tuple[int, int, int, bytes]] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(got) < count and time.monotonic() < deadline:
                m = consumer.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                now = int(time.time() * 1000)
                got.setdefault(
                    h.get(m.headers(), h.MESSAGE_ID) or "",
                    (
                        int(h.get(m.headers(), h.DELAY_DUE_MS) or 0),
                        m.timestamp()[1],
                        now,
                        m.value(),
                    ),
                )
        finally:
            consumer.close()
        return got


@pytest.fixture
def delay_env(kafka_broker: str) -> Iterator[DelayEnv]:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s,5s", template=f"d{tag}.{{tier}}", max_delay=60)
    options = ForwarderOptions(
        tiers=tiers,
        group=f"fwd-{tag}",
        cancel_topic=f"d{tag}.cancel",
        stats_topic=f"d{tag}.stats",
        stats_interval=0.5,
    )
    target = f"target-{tag}"
    admin.create_topic(kafka_broker, target, TARGET_PARTITIONS)
    fw = DelayForwarders(kafka_broker, options)
    stop = threading.Event()
    thread = threading.Thread(target=fw.run, args=(stop,), daemon=True)
    thread.start()
    assert fw.wait_assigned(30), "forwarders did not join their group"
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
    producer.produce(target, b"warm-up", headers=[(h.MESSAGE_ID, b"warm-up")])
    producer.flush(10)
    try:
        yield DelayEnv(kafka_broker, tiers, options, target, fw, producer)
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "forwarders did not stop"


def test_never_early_small_lateness_and_cascading(delay_env: DelayEnv) -> None:
    delays = [0.2, 0.5, 0.9, 1.0, 1.5, 2.0, 2.7, 4.0, 5.0, 7.5]
    sent = {}
    for i in range(30):
        d = delays[i % len(delays)]
        sent[delay_env.send(f"v{i}".encode(), key=str(i).encode(), delay=d)] = d
    assert delay_env.producer.flush(10) == 0
    got = delay_env.collect(len(sent) + 1, timeout=20)
    got.pop("warm-up", None)
    assert set(got) == set(sent), f"missing {len(set(sent) - set(got))} records"
    lateness = {}
    for msg_id, (due, ts, received, _value) in got.items():
        assert ts >= due, f"record {msg_id} (delay {sent[msg_id]}s) stamped {due - ts} ms early"
        assert received >= due, f"record {msg_id} received {due - received} ms early"
        lateness[msg_id] = received - due
    # The 1s tier and a 7.5 s delay cascading 5s -> 2s -> smallest tier both land on time.
    bound = 700  # ms; generous for a loaded 2-core CI machine
    slow = {sent[m]: late for m, late in lateness.items() if late > bound}
    assert not slow, f"late deliveries (delay s -> ms late): {slow}"
    snap = delay_env.forwarders.stats.snapshot()
    assert snap["5s"]["cascaded"] >= 1 and snap["2s"]["cascaded"] >= 1
    assert sum(s["delivered"] for s in snap.values()) == len(sent)


def test_cancel_wins_and_status_reports(delay_env: DelayEnv) -> None:
    keep = delay_env.send(b"keep", delay=1.5)
    drop = delay_env.send(b"drop", delay=1.5)
    drop_cascading = delay_env.send(b"drop-later", delay=6)
    cancel_delayed(delay_env.producer, drop, cancel_topic=delay_env.options.cancel_topic)
    cancel_delayed(delay_env.producer, drop_cascading, cancel_topic=delay_env.options.cancel_topic)
    pending = delay_env.send(b"pending", delay=40)
    assert delay_env.producer.flush(10) == 0

    got = delay_env.collect(2, timeout=4)  # warm-up + keep
    assert keep in got and drop not in got

    def status() -> dict:
        return {
            r.tier: r
            for r in delay_status(
                delay_env.bootstrap, delay_env.tiers,
                group=delay_env.options.group, stats_topic=delay_env.options.stats_topic,
            )
        }  # fmt: skip

    rows: dict = {}

    def delivered_one() -> bool:  # the forwarders publish stats every 0.5 s
        rows.update(status())
        return rows["1s"].delivered + rows["2s"].delivered >= 1

    wait_until(delivered_one, 10, interval=0.3, message="stats of a delivery")
    assert rows["5s"].pending >= 1  # the 40 s record is waiting in the largest tier
    assert rows["5s"].oldest_due_ms is not None and rows["5s"].oldest_due_ms > time.time() * 1000
    assert rows["1s"].delivered + rows["2s"].delivered >= 1
    assert any(r.lateness_p99_ms is not None for r in rows.values())

    got = delay_env.collect(3, timeout=6)
    assert drop_cascading not in got and drop not in got and pending not in got
    cancelled = sum(s["cancelled"] for s in delay_env.forwarders.stats.snapshot().values())
    assert cancelled == 2


def test_ensure_tier_topics_is_idempotent(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,5s", template=f"e{tag}_{{tier}}")
    for _ in range(2):
        ensure_tier_topics(kafka_broker, tiers, cancel_topic=f"e{tag}.c", stats_topic=None)
    names = {t.name for t in admin.list_topics(kafka_broker)}
    assert {f"e{tag}_1s", f"e{tag}_5s", f"e{tag}.c"} <= names
    info = admin.describe_topic(kafka_broker, f"e{tag}.c")
    assert any(c.name == "cleanup.policy" and c.value == "compact" for c in info.configs)
