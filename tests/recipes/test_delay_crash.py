"""Crashes: a forwarder process killed with SIGKILL mid-stream and restarted loses nothing;
neither does a broker killed and restarted under running forwarders.

Duplicates are allowed only as copies with the same message id; nothing is early.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from kops import admin
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.testing import BrokerProcess
from tests.recipes.processes import ForwarderProcess


def test_sigkill_mid_stream_loses_nothing(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s", template=f"k{tag}.{{tier}}", max_delay=60)
    target = f"crash-target-{tag}"
    admin.create_topic(kafka_broker, target, 2)
    ensure_tier_topics(kafka_broker, tiers)
    fwd = ForwarderProcess(kafka_broker, tiers, f"crash-{tag}", f"inst-{tag}")
    fwd.start()

    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
    sent: dict[str, int] = {}

    def produce(n: int, spread: float) -> None:
        for i in range(n):
            msg_id = send_delayed(
                producer, target, f"v{len(sent)}".encode(), delay=0.3 + (i % 6) * 0.5, tiers=tiers
            )
            sent[msg_id] = 0
            producer.poll(0)
            time.sleep(spread / n)
        producer.flush(10)

    # Records keep arriving and falling due while the forwarder is killed and restarted.
    feeder = threading.Thread(target=produce, args=(150, 3.0))
    feeder.start()
    time.sleep(1.5)
    fwd.kill()
    delivered_before_kill = sum(
        p.end_offset or 0 for p in admin.describe_topic(kafka_broker, target).partitions
    )
    assert delivered_before_kill > 0 and len(sent) < 150, "the kill was not mid-stream"
    time.sleep(0.5)
    fwd.start()
    feeder.join()
    assert producer.flush(10) == 0

    consumer = Consumer(
        {"bootstrap.servers": kafka_broker, "group.id": f"r-{tag}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([target])
    copies: dict[str, int] = {}
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and len(copies) < len(sent):
        m = consumer.poll(0.2)
        if m is None or m.error() is not None:
            continue
        msg_id = h.get(m.headers(), h.MESSAGE_ID) or ""
        due = int(h.get(m.headers(), h.DELAY_DUE_MS) or 0)
        assert m.timestamp()[1] >= due, "delivered early"
        copies[msg_id] = copies.get(msg_id, 0) + 1
    consumer.close()
    assert fwd.terminate() == 143  # 128 + SIGTERM: the worker stopped cleanly
    missing = set(sent) - set(copies)
    assert not missing, f"{len(missing)} of {len(sent)} records lost"
    assert set(copies) <= set(sent), "a delivered record has an unknown message id"


def test_broker_killed_and_restarted_loses_nothing(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "broker")
    bootstrap = broker.start()
    tiers = DelayTiers.parse("1s,2s")
    admin.create_topic(bootstrap, "target", 1)
    fw = DelayForwarders(bootstrap, ForwarderOptions(tiers=tiers, stats_interval=1))
    stop = threading.Event()
    thread = threading.Thread(target=fw.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert fw.wait_assigned(30)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        sent = set()
        for i in range(60):
            if i == 30:  # records are pending in the tiers when the broker dies
                assert producer.flush(10) == 0
                broker.kill()
                time.sleep(0.5)
                broker.start()  # same port and data directory
            sent.add(send_delayed(producer, "target", b"x", delay=0.5 + (i % 4) * 0.5, tiers=tiers))
            producer.poll(0)
        assert producer.flush(20) == 0
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "reader", "auto.offset.reset": "earliest"}
        )
        consumer.subscribe(["target"])
        got: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not sent <= got:
            m = consumer.poll(0.2)
            if m is None or m.error() is not None:
                continue
            assert m.timestamp()[1] >= int(h.get(m.headers(), h.DELAY_DUE_MS) or 0)
            got.add(h.get(m.headers(), h.MESSAGE_ID) or "")
        consumer.close()
        assert sent <= got, f"{len(sent - got)} of {len(sent)} records lost"
    finally:
        stop.set()
        thread.join(30)
        broker.stop()
