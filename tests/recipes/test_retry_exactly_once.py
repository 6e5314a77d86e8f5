"""The retry router with exactly_once: read_committed readers of the tier, retry and DLQ
topics see each failed record's retry and dead letter once, through aborted transactions
and SIGKILLs of the router, or of the broker, at random points under load.

The default run kills the router 3 times and the broker twice; ``-m slow`` kills each 20
times.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from kops import admin
from kops.client import UnknownTopic
from kops.consume import ConsumedRecord
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers
from kops.recipes.delay.forwarder import ForwarderOptions
from kops.recipes.exactly_once import TransactionsUnsupported
from kops.recipes.retry import Outcome, RetryPolicy, run_retrying_consumer
from kops.testing import BrokerProcess, wait_until
from tests.recipes import eos_handlers
from tests.recipes.processes import (
    ChildProcess,
    assert_one_line_error,
    run_kops,
    wait_for_progress,
)
from tests.recipes.streams import Background, Feeder, end_offsets, forwarders_running, read

HERE = Path(__file__).resolve().parent
POLICY = RetryPolicy(attempts=1, ladder=(1.0,))


def keys(records: Iterable[ConsumedRecord]) -> Counter[bytes]:
    return Counter(r.key or b"" for r in records)


def assert_once(found: Counter[bytes], expected: set[bytes], what: str) -> None:
    missing = expected - set(found)
    twice = {k: n for k, n in found.items() if n > 1}
    unexpected = set(found) - expected
    assert not missing, f"{what}: {len(missing)} of {len(expected)} lost, e.g. {min(missing)!r}"
    assert not twice, f"{what}: {len(twice)} more than once, e.g. {twice}"
    assert not unexpected, f"{what}: unexpected records {sorted(unexpected)[:5]}"


def committed(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], **kw: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        p.produce(topic, value, key=key, **kw)
    assert p.flush(10) == 0


class Router(Background):
    """run_retrying_consumer(exactly_once=True) in a thread, outcomes counted per key."""

    def __init__(self, bootstrap: str, topic: str, tiers: DelayTiers, **kw: object):
        super().__init__()
        self.outcomes: Counter[tuple[bytes, Outcome]] = Counter()
        self.error: BaseException | None = None
        self.group = f"router-{uuid.uuid4().hex[:6]}"
        self.args = (bootstrap, [topic], eos_handlers.by_value)
        self.kw = {"group": self.group, "policy": POLICY, "tiers": tiers, **kw}

    def on_outcome(self, msg: Message, outcome: Outcome) -> None:
        self.outcomes[(msg.key() or b"", outcome)] += 1

    def run(self) -> None:
        try:
            run_retrying_consumer(
                *self.args, stop=self.stop, on_outcome=self.on_outcome, exactly_once=True,
                **self.kw,
            )  # fmt: skip
        except BaseException as exc:
            self.error = exc

    def running(self) -> bool:
        assert self.error is None, f"router failed: {self.error!r}"
        return True


@pytest.fixture
def eos_tiers(kafka_broker: str) -> Iterator[DelayTiers]:
    """A 1s tier of this test's own, forwarded with exactly_once in a thread."""
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s", template=f"reos-{tag}.{{tier}}", max_delay=60)
    opts = ForwarderOptions(
        tiers=tiers, group=f"fwd-{tag}", cancel_topic=None, stats_topic=None, dlq_topic=None,
        stats_interval=0, exactly_once=True,
    )  # fmt: skip
    with forwarders_running(kafka_broker, opts):
        yield tiers


def test_each_retry_and_dead_letter_once_and_offsets_advance(
    kafka_broker: str, eos_tiers: DelayTiers
) -> None:
    topic = f"eos-orders-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 2)
    kinds = ["ok", "flaky", "retry", "dead"] * 15
    records = [(f"k{i:02d}-{kind}".encode(), kind.encode()) for i, kind in enumerate(kinds)]
    by_kind = {kind: {k for k, v in records if v == kind.encode()} for kind in set(kinds)}
    produce(kafka_broker, topic, records)
    dlq, tier = f"{topic}.dlq", eos_tiers.topic(1.0)
    with Router(kafka_broker, topic, eos_tiers) as router:

        def dead_letters() -> set[bytes]:
            router.running()
            return set(keys(read(kafka_broker, dlq)))

        wait_until(
            lambda: dead_letters() >= by_kind["retry"] | by_kind["dead"],
            40,
            message=lambda: f"every dead letter (router outcomes: {router.outcomes.total()})",
        )
    failing = by_kind["flaky"] | by_kind["retry"]
    in_tier = read(kafka_broker, tier)
    assert_once(keys(in_tier), failing, "retries in the tier topic")
    # Forwarded back to the source by the (exactly-once) forwarders, each once.
    source = read(kafka_broker, topic)
    back = [r for r in source if h.get(r.headers, h.RETRY_ATTEMPT) == "1"]
    assert_once(keys(back), failing, "retries back in the source topic")
    dead = read(kafka_broker, dlq)
    assert_once(keys(dead), by_kind["retry"] | by_kind["dead"], "dead letters")
    reasons = {r.key: h.get(r.headers, h.DLQ_REASON) for r in dead}
    assert {reasons[k] for k in by_kind["dead"]} == {"fatal"}
    assert {reasons[k] for k in by_kind["retry"]} == {"retries-exhausted"}
    # Written in transactions: each commit left a marker, so offsets outrun the records.
    assert sum(end_offsets(kafka_broker, tier).values()) > len(in_tier)
    # The group's offsets went past every record, retries included, in the transactions.
    last = {}
    for r in source:
        last[r.partition] = max(last.get(r.partition, -1), r.offset)
    done = committed(kafka_broker, router.group, topic, last)
    assert all(done[p] >= off + 1 for p, off in last.items()), (done, last)
    # Told once per record outcome that was committed.
    assert all(n == 1 for n in router.outcomes.values()), router.outcomes
    assert {k for k, o in router.outcomes if o is Outcome.DEAD_LETTERED} == set(reasons)


def test_an_aborted_batch_leaves_nothing_visible_and_is_handled_again(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"eos-abort-{tag}"
    tiers = DelayTiers.parse("1s", template=f"reab-{tag}.{{tier}}", max_delay=60)
    admin.create_topic(kafka_broker, topic, 1)
    # The DLQ refuses the big dead letter until the test raises its limit: every
    # transaction holding it aborts, the retries sent with it too.
    admin.create_topic(kafka_broker, f"{topic}.dlq", 1, config={"max.message.bytes": "2000"})
    big = (b"big-dead", b"dead" + b"x" * 4000)
    records = [(f"r{i}".encode(), b"retry") for i in range(5)]
    records += [big, *[(f"d{i}".encode(), b"dead") for i in range(3)]]
    records += [(f"s{i}".encode(), b"retry") for i in range(5)]
    produce(kafka_broker, topic, records, partition=0)
    eos_handlers.calls.clear()
    with Router(kafka_broker, topic, tiers, batch_size=100) as router:
        wait_until(
            lambda: router.running() and eos_handlers.calls[b"big-dead"] >= 2,
            30,
            message="the aborted batch handled again",
        )
        assert not read(kafka_broker, f"{topic}.dlq"), "an aborted dead letter is visible"
        admin.alter_topic_configs(kafka_broker, f"{topic}.dlq", {"max.message.bytes": "1048588"})
        wait_until(
            lambda: router.running() and b"big-dead" in keys(read(kafka_broker, f"{topic}.dlq")),
            30,
            message="the big dead letter, once the DLQ takes it",
        )
    failing = {k for k, v in records if v == b"retry"}
    dead = {k for k, v in records if v.startswith(b"dead")}
    assert_once(keys(read(kafka_broker, tiers.topic(1.0))), failing, "retries")
    assert_once(keys(read(kafka_broker, f"{topic}.dlq")), dead, "dead letters")
    # The aborted attempts' retries are in the log, hidden from read_committed readers.
    uncommitted = keys(read(kafka_broker, tiers.topic(1.0), committed=False))
    assert any(n > 1 for n in uncommitted.values()), uncommitted
    assert all(n == 1 for n in router.outcomes.values()), router.outcomes


def test_exactly_once_on_a_cluster_without_transactions_raises(no_transactions_broker: str) -> None:
    admin.create_topic(no_transactions_broker, "orders", 1)
    tiers = DelayTiers.parse("1s", template="norefuse.{tier}", max_delay=60)
    with pytest.raises(TransactionsUnsupported, match="refused a transactional producer"):
        run_retrying_consumer(
            no_transactions_broker, ["orders"], eos_handlers.by_value, group="g",
            policy=POLICY, tiers=tiers, exactly_once=True, idle_timeout=5,
        )  # fmt: skip


def router_recipe(path: Path, topic: str, tag: str, instance: str | None) -> Path:
    path.write_text(
        f"""
[[job]]
name = "router"
kind = "retry-consumer"
topics = ["{topic}"]
group = "router-{tag}"
handler = "eos_handlers:by_value"
python_path = "{HERE}"
tiers = ["1s"]
template = "{tag}.{{tier}}"
max_delay = "1m"
batch_size = 20
exactly_once = true
{f'instance_id = "{instance}"' if instance else ""}

[job.retry]
attempts = 1
ladder = ["1s"]
"""
    )
    return path


def test_the_worker_command_exits_1_with_one_line(
    no_transactions_broker: str, tmp_path: Path
) -> None:
    admin.create_topic(no_transactions_broker, "orders", 1)
    recipe = router_recipe(tmp_path / "router.toml", "orders", "norefuse", None)
    result = run_kops(no_transactions_broker, "worker", "run", str(recipe))
    assert_one_line_error(result, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")


class SourceFeeder(Feeder):
    """Records of every kind to the source topic at a steady pace until stopped."""

    KINDS = (b"ok", b"retry", b"dead")

    def __init__(self, bootstrap: str, topic: str, rate: float = 60.0):
        super().__init__(bootstrap, rate)
        self.topic = topic
        self.sent: dict[bytes, bytes] = {}

    def send(self, i: int) -> None:
        key, kind = f"k{i:05d}".encode(), self.KINDS[i % len(self.KINDS)]
        self.producer.produce(self.topic, kind, key=key)
        self.sent[key] = kind

    def expected(self, kind: bytes) -> set[bytes]:
        return {k for k, v in self.sent.items() if v == kind}


def _router_under_kills(
    bootstrap: str, tmp_path: Path, kills: int, kill: Callable[[ChildProcess], None]
) -> None:
    """The router as ``kops worker run`` under a steady feeder; ``kill(router)`` (SIGKILL
    of the router or of the broker, then a restart) ``kills`` times at random points; then
    each retry and dead letter once, and the group's offsets at the source's end."""
    tag = uuid.uuid4().hex[:8]
    topic = f"eosk-orders-{tag}"
    admin.create_topic(bootstrap, topic, 2)
    tier, dlq = f"{tag}.1s", f"{topic}.dlq"
    recipe = router_recipe(tmp_path / "router.toml", topic, tag, f"router-{tag}")
    router = ChildProcess(bootstrap, ["worker", "run", str(recipe)])
    started = time.monotonic()
    router.start()
    rng = random.Random(kills)

    def outputs() -> int:
        router.alive()
        try:
            return sum(end_offsets(bootstrap, tier).values()) + sum(
                end_offsets(bootstrap, dlq).values()
            )
        except UnknownTopic:  # the router creates them when it starts
            return 0

    with SourceFeeder(bootstrap, topic) as feeder:
        for _ in range(kills):
            wait_for_progress(outputs, rng, router.log, what="the router made progress")
            kill(router)
    retries, dead = feeder.expected(b"retry"), feeder.expected(b"dead")
    wait_until(
        lambda: (
            router.alive()
            and set(keys(read(bootstrap, tier))) >= retries
            and set(keys(read(bootstrap, dlq))) >= dead
        ),
        60,
        message=lambda: "every retry and dead letter after the kills; log:\n" + router.log(),
    )
    assert router.terminate() == 143
    assert_once(keys(read(bootstrap, tier)), retries, "retries")
    assert_once(keys(read(bootstrap, dlq)), dead, "dead letters")
    ends = end_offsets(bootstrap, topic)
    assert committed(bootstrap, f"router-{tag}", topic, ends) == ends
    print(
        f"{kills} kills, {len(feeder.sent)} records ({len(retries)} retries, {len(dead)} dead "
        f"letters): each once, in {time.monotonic() - started:.1f}s"
    )


def _restart_router(router: ChildProcess) -> None:
    router.kill()
    router.start()


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_router_sigkills_duplicate_and_lose_nothing(kafka_broker: str, tmp_path: Path) -> None:
    _router_under_kills(kafka_broker, tmp_path, 3, _restart_router)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_twenty_router_sigkills_duplicate_and_lose_nothing(
    kafka_broker: str, tmp_path: Path
) -> None:
    _router_under_kills(kafka_broker, tmp_path, 20, _restart_router)


def _broker_kills(broker: BrokerProcess, tmp_path: Path, kills: int) -> None:
    def restart_broker(_router: ChildProcess) -> None:
        broker.kill()
        broker.start()  # same port and data directory; the router runs on

    _router_under_kills(broker.bootstrap, tmp_path, kills, restart_broker)


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_broker_sigkills_under_the_exactly_once_router(
    broker_process: BrokerProcess, tmp_path: Path
) -> None:
    _broker_kills(broker_process, tmp_path, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_twenty_broker_sigkills_under_the_exactly_once_router(
    broker_process: BrokerProcess, tmp_path: Path
) -> None:
    _broker_kills(broker_process, tmp_path, kills=20)
