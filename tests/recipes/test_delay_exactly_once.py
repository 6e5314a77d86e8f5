"""Delay forwarders with exactly_once: each record reaches its target once (read_committed),
never early, through forwarder SIGKILLs and broker SIGKILLs at random points under load.

The default run kills a few times; ``-m slow`` runs the issue's 20 kills of each.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from kops import admin
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.recipes.exactly_once import TransactionsUnsupported
from kops.testing import BrokerProcess, wait_until
from tests.recipes.broker_kills import killable_broker
from tests.recipes.processes import ForwarderProcess, assert_one_line_error, run_kops
from tests.recipes.streams import Feeder, read


def read_all_committed(bootstrap: str, topic: str, partitions: int) -> list[tuple[str, int, int]]:
    """(message id, timestamp, due) of every committed record of ``topic``."""
    return [
        (
            h.get(m.headers, h.MESSAGE_ID) or "",
            m.timestamp or 0,
            int(h.get(m.headers, h.DELAY_DUE_MS) or 0),
        )
        for m in read(bootstrap, topic)
    ]


def assert_exactly_once(delivered: list[tuple[str, int, int]], sent: set[str]) -> None:
    copies = Counter(msg_id for msg_id, _ts, _due in delivered)
    missing = sent - set(copies)
    twice = {m: n for m, n in copies.items() if n > 1}
    assert not missing, f"{len(missing)} of {len(sent)} records lost"
    assert not twice, f"{len(twice)} records delivered more than once"
    assert set(copies) == sent, "a delivered record has an unknown message id"
    early = [(ts, due) for _m, ts, due in delivered if ts < due]
    assert not early, f"{len(early)} records delivered early, e.g. {early[0]}"
    print(f"{len(sent)} records: each delivered once, none early")  # the figure, with -s


class DelayFeeder(Feeder):
    """Sends delayed records at a steady pace from its own thread until stopped."""

    def __init__(self, bootstrap: str, target: str, tiers: DelayTiers, rate: float = 40.0):
        super().__init__(bootstrap, rate)
        self.target, self.tiers = target, tiers
        self.sent: set[str] = set()
        self.rng = random.Random(7)

    def send(self, i: int) -> None:
        delay = self.rng.uniform(0.1, 2.5)
        self.sent.add(send_delayed(self.producer, self.target, b"x", delay=delay, tiers=self.tiers))


def test_each_record_is_forwarded_once_in_a_transaction(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s", template=f"eos{tag}.{{tier}}", max_delay=60)
    target = f"eos-target-{tag}"
    admin.create_topic(kafka_broker, target, 2)
    options = ForwarderOptions(
        tiers=tiers, group=f"eos-{tag}", exactly_once=True, stats_interval=1,
        cancel_topic=None, dlq_topic=None,
    )  # fmt: skip
    fw = DelayForwarders(kafka_broker, options)
    stop = threading.Event()
    thread = threading.Thread(target=fw.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert fw.wait_assigned(30)
        producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
        sent = {
            send_delayed(producer, target, b"v", delay=0.2 + (i % 8) * 0.3, tiers=tiers)
            for i in range(120)
        }
        assert producer.flush(10) == 0
        wait_until(
            lambda: (
                len({m for m, _t, _d in read_all_committed(kafka_broker, target, 2)}) >= len(sent)
            ),
            30,
            message="every record forwarded",
        )
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert_exactly_once(read_all_committed(kafka_broker, target, 2), sent)
    # Forwarded in transactions, not plainly: every tier committed some.
    assert all(f.txn is not None and f.txn.committed > 0 for f in fw.forwarders)


def _delivered(bootstrap: str, topic: str) -> int:
    return sum(p.end_offset or 0 for p in admin.describe_topic(bootstrap, topic).partitions)


def _wait_for_progress(
    bootstrap: str, topic: str, rng: random.Random, fwd: ForwarderProcess
) -> None:
    """Until the target has grown by a random few records: the next kill falls at a random
    point of a stream that is moving (mid-round, mid-commit or between rounds)."""
    want = _delivered(bootstrap, topic) + rng.randint(2, 25)
    wait_until(
        lambda: _delivered(bootstrap, topic) >= want,
        30,
        message=lambda: "forwarding resumed; forwarder log:\n" + "".join(fwd.lines[-30:]),
    )


def _forwarder_kills(kafka_broker: str, kills: int) -> None:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s", template=f"eosk{tag}.{{tier}}", max_delay=60)
    target = f"eosk-target-{tag}"
    admin.create_topic(kafka_broker, target, 2)
    ensure_tier_topics(kafka_broker, tiers)
    fwd = ForwarderProcess(
        kafka_broker, tiers, f"eosk-{tag}", f"inst-{tag}", "--exactly-once", "--dlq-topic", ""
    )
    fwd.start()
    rng = random.Random(kills)
    with DelayFeeder(kafka_broker, target, tiers) as feeder:
        for _ in range(kills):
            _wait_for_progress(kafka_broker, target, rng, fwd)
            fwd.kill()
            fwd.start()
    sent = feeder.sent
    wait_until(
        lambda: len({m for m, _t, _d in read_all_committed(kafka_broker, target, 2)}) >= len(sent),
        40,
        message="every record forwarded after the kills",
    )
    assert fwd.terminate() == 143
    assert_exactly_once(read_all_committed(kafka_broker, target, 2), sent)


def test_forwarder_sigkills_duplicate_and_lose_nothing(kafka_broker: str) -> None:
    _forwarder_kills(kafka_broker, kills=3)


@pytest.mark.slow
def test_twenty_forwarder_sigkills_duplicate_and_lose_nothing(kafka_broker: str) -> None:
    _forwarder_kills(kafka_broker, kills=20)


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    with killable_broker(tmp_path) as broker:
        yield broker


def _broker_kills(broker: BrokerProcess, kills: int) -> None:
    bootstrap = broker.bootstrap
    tiers = DelayTiers.parse("1s,2s", template="eosb.{tier}", max_delay=60)
    admin.create_topic(bootstrap, "target", 2)
    ensure_tier_topics(bootstrap, tiers)
    fwd = ForwarderProcess(bootstrap, tiers, "eosb", "inst", "--exactly-once", "--dlq-topic", "")
    fwd.start()
    rng = random.Random(kills + 100)
    with DelayFeeder(bootstrap, "target", tiers, rate=20) as feeder:
        for _ in range(kills):
            _wait_for_progress(bootstrap, "target", rng, fwd)
            broker.kill()
            broker.start()  # same port and data directory
    sent = feeder.sent
    wait_until(
        lambda: len({m for m, _t, _d in read_all_committed(bootstrap, "target", 2)}) >= len(sent),
        60,
        message="every record forwarded after the broker kills",
    )
    assert fwd.terminate() == 143
    assert_exactly_once(read_all_committed(bootstrap, "target", 2), sent)


def test_broker_sigkills_under_exactly_once_forwarders(broker_process: BrokerProcess) -> None:
    _broker_kills(broker_process, kills=2)


@pytest.mark.slow
def test_twenty_broker_sigkills_under_exactly_once_forwarders(
    broker_process: BrokerProcess,
) -> None:
    _broker_kills(broker_process, kills=20)


def test_exactly_once_on_a_cluster_without_transactions_stops_and_says_so(
    no_transactions_broker: str,
) -> None:
    tiers = DelayTiers.parse("1s", template="norefuse.{tier}", max_delay=60)
    fw = DelayForwarders(no_transactions_broker, ForwarderOptions(tiers=tiers, exactly_once=True))
    with pytest.raises(TransactionsUnsupported, match="refused a transactional producer"):
        fw.run(threading.Event())


def test_the_worker_command_exits_1_with_one_line(no_transactions_broker: str) -> None:
    result = run_kops(no_transactions_broker, "delay", "worker", "--tiers", "1s", "--exactly-once")
    assert_one_line_error(result, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")
