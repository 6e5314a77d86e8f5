"""Delay forwarders under faults, against a real broker and real clients:

- workers joining and leaving while tier partitions are paused, then a broker restart;
- records aimed at a topic that does not exist (dead-lettered, nothing else stops);
- the broker away for 20 s (SIGKILL, then back on the same port and data dir).

Every record must be delivered once due, never early, with no forwarder restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from kops import admin
from kops.client import UnknownTopic
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, send_delayed
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.testing import BrokerProcess, run_broker, wait_until


@dataclass
class Copy:
    due_ms: int
    timestamp_ms: int
    received_ms: int
    headers: list


@dataclass
class Collector:
    """Reads topics from the beginning in a thread, across broker restarts."""

    bootstrap: str
    topics: dict[str, int]  # topic -> partitions
    copies: dict[str, list[Copy]] = field(default_factory=dict)  # message id -> copies
    by_topic: dict[str, list[Copy]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"collector-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        c.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t, n in self.topics.items()
                for p in range(n)
            ]
        )
        try:
            while not self.stop.is_set():
                m = c.poll(0.1)
                if m is None or m.error() is not None:
                    continue
                hdrs = m.headers() or []
                copy = Copy(
                    int(h.get(hdrs, h.DELAY_DUE_MS) or 0),
                    m.timestamp()[1],
                    int(time.time() * 1000),
                    hdrs,
                )
                with self._lock:
                    self.copies.setdefault(h.get(hdrs, h.MESSAGE_ID) or "", []).append(copy)
                    self.by_topic.setdefault(m.topic(), []).append(copy)
        finally:
            c.close()

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.copies)

    def in_topic(self, topic: str) -> list[Copy]:
        with self._lock:
            return list(self.by_topic.get(topic, []))

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)

    def check_never_early(self) -> None:
        with self._lock:
            for msg_id, copies in self.copies.items():
                for c in copies:
                    assert c.timestamp_ms >= c.due_ms, f"{msg_id} stamped early"
                    assert c.received_ms >= c.due_ms, f"{msg_id} received early"

    def duplicates(self) -> int:
        with self._lock:
            return sum(len(c) - 1 for c in self.copies.values())


class Running:
    """A DelayForwarders instance in a thread (what `kops delay worker` runs)."""

    def __init__(self, bootstrap: str, options: ForwarderOptions):
        self.fw = DelayForwarders(bootstrap, options)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.thread.start()
        assert self.fw.wait_assigned(30), "forwarders did not join their group"

    def _run(self) -> None:
        try:
            self.fw.run(self.stop)
        except BaseException as exc:  # the worker would restart the job: a failure here
            self.error = exc

    def healthy(self) -> bool:
        return self.thread.is_alive() and self.error is None and not self.fw._failed

    def paused(self) -> list[tuple[str, int]]:
        return [
            (t.label, p) for t in self.fw.forwarders for p, st in list(t.parts.items()) if st.paused
        ]

    def owned(self) -> int:
        return sum(len(t.parts) for t in self.fw.forwarders)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "forwarders did not stop"


def _send(
    producer: Producer, target: str, tiers: DelayTiers, sent: dict[str, int], delays: list[float]
) -> None:
    for i, d in enumerate(delays):
        msg_id = send_delayed(producer, target, f"v{len(sent)}".encode(), key=str(i).encode(),
                              delay=d, tiers=tiers)  # fmt: skip
        sent[msg_id] = 0
    assert producer.flush(30) == 0


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_workers_joining_leaving_and_a_broker_restart_lose_and_stall_nothing(
    broker_process: BrokerProcess,
) -> None:
    bootstrap = broker_process.bootstrap
    tiers = DelayTiers.parse("1s,2s,5s", template="r.{tier}", max_delay=60)
    options = ForwarderOptions(
        tiers=tiers, group="fwd", partitions=2, stats_interval=1, session_timeout_ms=6000
    )
    admin.create_topic(bootstrap, "target", 2)
    first = Running(bootstrap, options)
    collector = Collector(bootstrap, {"target": 2})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent: dict[str, int] = {}
    delays = [2 + (i % 9) for i in range(54)]  # due in 2..10 s, across every tier
    try:
        _send(producer, "target", tiers, sent, delays)
        wait_until(lambda: len(first.paused()) >= 2, 10, message="paused tier partitions")

        # A second worker joins while partitions are paused: some are revoked from the first.
        second = Running(bootstrap, options)
        wait_until(lambda: second.owned() >= 3, 20, message="the second worker's partitions")
        _send(producer, "target", tiers, sent, delays)
        wait_until(lambda: second.paused(), 10, message="a paused partition in the second")
        # It leaves: the first worker gets back partitions it had paused before.
        second.close()
        wait_until(lambda: first.owned() == 6, 20, message="the first worker to own everything")
        _send(producer, "target", tiers, sent, delays)

        # The broker restarts (clean stop, same port and data): still no forwarder restart.
        broker_process.stop()
        broker_process.start()
        _send(producer, "target", tiers, sent, delays)

        wait_until(
            lambda: set(sent) <= collector.ids(),
            60,
            message=lambda: f"{len(set(sent) - collector.ids())} of {len(sent)} records",
        )
        collector.check_never_early()
        assert first.healthy(), first.error or first.fw._failed
        assert second.error is None
        assert collector.ids() == set(sent)
    finally:
        collector.close()
        first.close()


@pytest.fixture
def strict_broker(tmp_path: Path) -> Iterator[str]:
    """A broker that never creates topics on its own."""
    with run_broker(tmp_path / "strict", config={"auto.create.topics.enable": "false"}) as b:
        yield b


def test_missing_target_is_dead_lettered_and_everything_else_flows(strict_broker: str) -> None:
    bootstrap = strict_broker
    tag = uuid.uuid4().hex[:6]
    tiers = DelayTiers.parse("1s,2s", template=f"m{tag}.{{tier}}", max_delay=60)
    options = ForwarderOptions(
        tiers=tiers,
        group=f"fwd-{tag}",
        cancel_topic=f"m{tag}.cancel",
        stats_topic=f"m{tag}.stats",
        dlq_topic=f"m{tag}.dlq",
        stats_interval=0.5,
    )
    good, missing = f"good-{tag}", f"missing-{tag}"
    admin.create_topic(bootstrap, good, 1)
    fw = Running(bootstrap, options)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    try:
        with pytest.raises(UnknownTopic, match=missing):
            send_delayed(producer, missing, b"x", delay=1, tiers=tiers)
        collector = Collector(bootstrap, {good: 1, options.dlq_topic: 1})  # type: ignore[dict-item]
        good_ids, bad_ids = set(), set()
        for i in range(30):  # interleaved on the same tier partitions
            target = missing if i % 5 == 2 else good
            msg_id = send_delayed(
                producer, target, f"v{i}".encode(), delay=0.5 + (i % 4) * 0.5, tiers=tiers,
                check_target=False,
            )  # fmt: skip
            (bad_ids if target == missing else good_ids).add(msg_id)
        assert producer.flush(10) == 0
        wait_until(lambda: good_ids | bad_ids <= collector.ids(), 20, message="all 30 records")

        dead = collector.in_topic(options.dlq_topic)  # type: ignore[arg-type]
        assert {h.get(c.headers, h.MESSAGE_ID) for c in dead} == bad_ids
        for c in dead:
            assert h.get(c.headers, h.DLQ_ORIGINAL_TOPIC) == missing
            assert h.get(c.headers, h.DLQ_EXCEPTION_CLASS) == "kops.client.UnknownTopic"
            assert missing in (h.get(c.headers, h.DLQ_EXCEPTION_MESSAGE) or "")
            assert h.get(c.headers, h.DLQ_REASON) == "non-retryable"
            assert h.get(c.headers, h.DLQ_GROUP) == options.group
            assert (h.get(c.headers, h.DELAY_FROM) or "").startswith(f"m{tag}.")
            assert h.get(c.headers, h.DELAY_TARGET) == missing
        # The target appears: records for it flow again, with no restart.
        admin.create_topic(bootstrap, missing, 1)
        later = send_delayed(producer, missing, b"later", delay=1, tiers=tiers)
        assert producer.flush(10) == 0
        collector.close()
        collector = Collector(bootstrap, {good: 1, missing: 1, options.dlq_topic: 1})  # type: ignore[dict-item]
        wait_until(lambda: later in collector.ids(), 15, message="the record for the new topic")
        assert fw.healthy(), fw.error or fw.fw._failed
    finally:
        fw.close()

    # Nothing forwarded is forwarded again: every tier committed past its dead letters,
    # so a new forwarder in the same group sends nothing more.
    again = Running(bootstrap, options)
    try:
        ends = {
            t: admin.describe_topic(bootstrap, t).partitions[0].end_offset for t in tiers.topics()
        }
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": options.group})
        committed = {
            tp.topic: tp.offset
            for tp in probe.committed([TopicPartition(t, 0) for t in tiers.topics()], timeout=10)
        }
        probe.close()
        assert committed == ends
        collector.check_never_early()
        copies = {i: len(c) for i, c in collector.copies.items()}
        assert all(n == 1 for n in copies.values()), "a record was delivered twice"
        assert again.healthy()
    finally:
        again.close()
        collector.close()


def test_broker_away_for_20s_costs_no_restart_and_few_duplicates(
    broker_process: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = broker_process.bootstrap
    tiers = DelayTiers.parse("1s,2s,5s", template="o.{tier}", max_delay=60)
    options = ForwarderOptions(tiers=tiers, group="fwd", stats_interval=1)
    admin.create_topic(bootstrap, "target", 2)
    fw = Running(bootstrap, options)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent: dict[str, int] = {}
    # 150 records due 1..30 s from now: some before the outage, many during, some after.
    _send(producer, "target", tiers, sent, [1 + (i % 30) for i in range(150)])
    collector = Collector(bootstrap, {"target": 2})
    try:
        wait_until(lambda: len(collector.ids()) >= 10, 15, message="deliveries before the outage")
        broker_process.kill()  # SIGKILL: in-flight produces and commits are lost
        collector.close()
        time.sleep(20)  # the outage itself (not a poll): the forwarders must ride it out
        broker_process.start()  # same port and data directory
        collector = Collector(bootstrap, {"target": 2})
        wait_until(
            lambda: set(sent) <= collector.ids(),
            40,
            message=lambda: f"{len(set(sent) - collector.ids())} of {len(sent)} records",
        )
        collector.check_never_early()
        assert fw.healthy(), fw.error or fw.fw._failed
        dups = collector.duplicates()
        with capsys.disabled():
            print(f"\nbroker outage of 20 s: {dups} duplicate(s) among {len(sent)} records")
        # Only records in flight when the broker died may be sent twice.
        assert dups <= options.max_batch
        assert dups <= 20, f"{dups} duplicates"
    finally:
        collector.close()
        fw.close()
