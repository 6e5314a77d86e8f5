"""Chaos: each recipe's process killed with SIGKILL at random moments, under load.

For the delay worker, the DLQ retry router (`kops worker run` with a retry-consumer job),
the backlog fan-out and the idempotent consumer example: KILLS (20) times, start the
process, wait until it has made progress, let a random extra moment pass, ``kill -9`` it,
while a producer keeps adding records. Then run it once more to the end and check:

- 0 records lost,
- 0 delivered early (delay queue),
- duplicates counted and printed (0 where the idempotent helper is on).

Marked ``slow`` (skipped by default; ``pytest -m slow tests/chaos``). The seed is printed;
rerun one with ``KOPS_CHAOS_SEED=<seed>``; ``KOPS_CHAOS_KILLS`` changes the number of kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import ClientSettings
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.testing import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("KOPS_CHAOS_KILLS", "20"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("KOPS_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{request.node.name}: seed {seed} (KOPS_CHAOS_SEED={seed} to rerun)")
    return random.Random(seed)


class Child:
    """A child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
            into.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        def ready() -> object:
            assert self.proc.poll() is None, f"exited before {what}:\n{self.stderr[-3000:]}"
            return condition()

        wait_until(ready, timeout, message=lambda: f"{what}:\n{self.stderr[-3000:]}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout)

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _env(bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"}
    return {**env, "KOPS_BOOTSTRAP": bootstrap, "PYTHONUNBUFFERED": "1"}


class Load:
    """A background producer calling ``send(i)`` about ``rate`` times a second until stopped."""

    def __init__(self, send: Callable[[int], None], rate: float):
        self.send, self.rate, self.sent = send, rate, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            self.send(self.sent)
            self.sent += 1
            # Pacing the load (an even rate), not polling for a condition.
            self._stop.wait(max(0.0, started + self.sent / self.rate - time.monotonic()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chaos(
    rng: random.Random,
    start: Callable[[], Child],
    progressed: Callable[[int], bool],
    *,
    spread: tuple[float, float] = (0.0, 1.5),
) -> list[float]:
    """KILLS times: start, wait until ``progressed(kill_number)``, then kill -9 a random
    moment later. Returns how long each run lived."""
    lived = []
    for i in range(KILLS):
        child = start()
        t0 = time.monotonic()
        try:
            child.wait_for(lambda i=i: progressed(i), f"progress before kill {i + 1}")
            time.sleep(rng.uniform(*spread))  # not polling: the random moment of the kill
            child.kill9()
        finally:
            child.ensure_dead()
        lived.append(time.monotonic() - t0)
    return lived


def _report(name: str, **figures: object) -> None:
    print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def _committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    c = Consumer(ClientSettings(bootstrap).consumer_config(group))
    try:
        found = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return sum(max(tp.offset, 0) for tp in found)


class Reader:
    """Reads a topic from the beginning in a thread; keeps every record's headers."""

    def __init__(self, bootstrap: str, topics: list[str]):
        self.records: list[tuple[str, list[tuple[str, bytes]], int, bytes | None]] = []
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._consumer.subscribe(topics)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self._consumer.poll(0.2)
            if m is not None and m.error() is None:
                self.records.append((m.topic(), m.headers() or [], m.timestamp()[1], m.value()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


# --------------------------------------------------------------------------- delay worker


def test_delay_worker_killed_20_times(kafka_broker: str, rng: random.Random) -> None:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s", template=f"chd{tag}.{{tier}}", max_delay=60)
    target = f"chd-target-{tag}"
    admin.create_topic(kafka_broker, target, 2)
    ensure_tier_topics(kafka_broker, tiers)
    command = [
        sys.executable, "-m", "kops", "delay", "worker", "--tiers", "1s,2s",
        "--template", tiers.template, "--group", f"chd-{tag}", "--instance-id", f"chd-{tag}",
        "--cancel-topic", f"chd{tag}.cancel", "--stats-topic", f"chd{tag}.stats",
        "--stats-interval", "1s",
    ]  # fmt: skip
    reader = Reader(kafka_broker, [target])
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
    sent: set[str] = set()

    def send(i: int) -> None:
        sent.add(
            send_delayed(
                producer, target, f"v{i}".encode(), delay=0.2 + (i % 8) * 0.35, tiers=tiers
            )
        )
        producer.poll(0)

    def delivered() -> int:
        return len(reader.records)

    marks = [0]

    def progressed(_: int) -> bool:
        if delivered() > marks[0]:
            marks[0] = delivered()
            return True
        return False

    t0 = time.monotonic()
    try:
        with Load(send, rate=60):
            lived = chaos(rng, lambda: Child(command, _env(kafka_broker)), progressed)
        assert producer.flush(30) == 0
        final = Child(command, _env(kafka_broker))
        try:
            final.wait_for(
                lambda: sent <= {h.get(r[1], h.MESSAGE_ID) for r in reader.records},
                "every record delivered",
                timeout=120,
            )
            assert final.terminate() == 143, final.stderr[-2000:]
        finally:
            final.ensure_dead()
    finally:
        reader.close()
    copies = Counter(h.get(r[1], h.MESSAGE_ID) for r in reader.records)
    early = [r for r in reader.records if r[2] < int(h.get(r[1], h.DELAY_DUE_MS) or 0)]
    lost = sent - set(copies)
    duplicates = sum(c - 1 for c in copies.values())
    _report(
        "delay worker", kills=KILLS, sent=len(sent), lost=len(lost), early=len(early),
        duplicates=duplicates, seconds=round(time.monotonic() - t0, 1),
        mean_life=round(sum(lived) / len(lived), 2),
    )  # fmt: skip
    assert not lost, f"{len(lost)} of {len(sent)} delayed records lost"
    assert not early, f"{len(early)} records delivered before they were due"
    assert set(copies) <= sent


# --------------------------------------------------------------------------- DLQ retry router

HANDLER = '''
"""Chaos handler: every 5th order fails once (retried through the 1s tier), every 7th is
fatal (dead-lettered); the others succeed. Effects are lines appended to EFFECTS."""
import json
import os

from kops.recipes import headers as h
from kops.recipes.retry import FatalError

EFFECTS = os.environ["CHAOS_EFFECTS"]


class BadOrder(FatalError):
    pass


def handle(msg):
    n = json.loads(msg.value())["n"]
    if n % 7 == 3:
        raise BadOrder(f"order {n} is bad")
    if n % 5 == 1 and int(h.get(msg.headers(), h.RETRY_ATTEMPT) or 0) < 1:
        raise ConnectionError(f"gateway down for order {n}")
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{n}\\n".encode())
    finally:
        os.close(fd)
'''


def test_retry_router_killed_20_times(
    kafka_broker: str, rng: random.Random, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    orders = f"cho-{tag}"
    admin.create_topic(kafka_broker, orders, 2)
    (tmp_path / "chaos_handler.py").write_text(HANDLER)
    effects = tmp_path / "effects.log"
    recipe = tmp_path / "router.toml"
    recipe.write_text(
        f"""
[[job]]
name = "fwd"
kind = "delay-forwarders"
tiers = ["1s"]
template = "cho{tag}.delay.{{tier}}"
group = "cho-fwd-{tag}"
instance_id = "cho-fwd-{tag}"
session_timeout_ms = 6000
cancel_topic = ""
stats_topic = ""

[[job]]
name = "router"
kind = "retry-consumer"
topics = ["{orders}"]
group = "cho-{tag}"
handler = "chaos_handler:handle"
python_path = "{tmp_path}"
tiers = ["1s"]
template = "cho{tag}.delay.{{tier}}"
batch_size = 20
[job.retry]
attempts = 1
ladder = ["1s"]
[job.consumer]
"group.instance.id" = "cho-{tag}"
"session.timeout.ms" = 6000
"""
    )
    env = {**_env(kafka_broker), "CHAOS_EFFECTS": str(effects)}
    command = [sys.executable, "-m", "kops", "worker", "run", str(recipe)]
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})

    def send(i: int) -> None:
        producer.produce(orders, key=str(i % 13).encode(), value=json.dumps({"n": i}))
        producer.poll(0)

    def done() -> Counter[int]:
        if not effects.exists():
            return Counter()
        return Counter(int(line) for line in effects.read_text().split())

    marks = [0]

    def progressed(_: int) -> bool:
        total = sum(done().values())
        if total > marks[0]:
            marks[0] = total
            return True
        return False

    dlq = f"{orders}.dlq"
    t0 = time.monotonic()
    with Load(send, rate=60) as load:
        lived = chaos(rng, lambda: Child(command, env), progressed)
    assert producer.flush(30) == 0
    fatal = {n for n in range(load.sent) if n % 7 == 3}
    good = set(range(load.sent)) - fatal
    reader = Reader(kafka_broker, [dlq])
    final = Child(command, env)
    try:

        def dead() -> Counter[int]:
            return Counter(json.loads(r[3] or b"{}").get("n") for r in reader.records)

        final.wait_for(
            lambda: good <= set(done()) and fatal <= set(dead()),
            "every order charged or dead-lettered",
            timeout=180,
        )
        assert final.terminate() == 143, final.stderr[-2000:]
    finally:
        final.ensure_dead()
        reader.close()
    charged, dead_lettered = done(), dead()
    lost = (good - set(charged)) | (fatal - set(dead_lettered))
    wrong = (set(charged) & fatal) | (set(dead_lettered) & good)
    duplicates = sum(c - 1 for c in charged.values()) + sum(c - 1 for c in dead_lettered.values())
    _report(
        "retry router", kills=KILLS, sent=load.sent, lost=len(lost), misrouted=len(wrong),
        duplicates=duplicates, seconds=round(time.monotonic() - t0, 1),
        mean_life=round(sum(lived) / len(lived), 2),
    )  # fmt: skip
    assert not lost, f"{len(lost)} of {load.sent} orders lost: {sorted(lost)[:20]}"
    assert not wrong, f"orders charged and dead-lettered the wrong way: {sorted(wrong)[:20]}"


# --------------------------------------------------------------------------- backlog fanout


def test_fanout_killed_20_times(kafka_broker: str, rng: random.Random) -> None:
    tag = uuid.uuid4().hex[:8]
    source, target, group = f"chf-{tag}", f"chf-{tag}.fo", f"chf-{tag}"
    admin.create_topic(kafka_broker, source, 4)
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
    for i in range(3000):  # a backlog to start with; the load keeps adding to it
        producer.produce(source, key=str(i % 97).encode(), value=f"b{i}".encode())
    assert producer.flush(30) == 0

    def send(i: int) -> None:
        for j in range(5):
            producer.produce(source, key=str((i + j) % 97).encode(), value=f"l{i}.{j}".encode())
        producer.poll(0)

    base = [sys.executable, "-m", "kops", "backlog", "fanout", "--from", source, "--group", group]
    base += ["--to", target, "--partitions", "16", "--start", "earliest"]

    marks = [0]

    def progressed(_: int) -> bool:
        total = _committed_total(kafka_broker, group, source, 4)
        if total > marks[0]:
            marks[0] = total
            return True
        return False

    t0 = time.monotonic()
    with Load(send, rate=100):  # 500 records/s on top of the backlog
        lived = chaos(rng, lambda: Child([*base, "--rate", "2000"], _env(kafka_broker)), progressed)
    assert producer.flush(30) == 0
    final = subprocess.run(
        [*base, "--until-caught-up", "--json"],
        env=_env(kafka_broker),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    assert json.loads(final.stdout)["caught_up"]
    reader = Reader(kafka_broker, [target])
    total = admin.describe_topic(kafka_broker, target).total_records
    try:
        wait_until(lambda: len(reader.records) >= (total or 0), 120, message="the target read")
    finally:
        reader.close()
    ids = Counter(h.get(r[1], h.MESSAGE_ID) for r in reader.records)
    ends = admin.describe_topic(kafka_broker, source).partitions
    source_ids = {f"{source}/{p.partition}/{o}" for p in ends for o in range(p.end_offset or 0)}
    lost = source_ids - set(ids)
    duplicates = sum(c - 1 for c in ids.values())
    _report(
        "backlog fanout", kills=KILLS, source_records=len(source_ids), lost=len(lost),
        duplicates=duplicates, seconds=round(time.monotonic() - t0, 1),
        mean_life=round(sum(lived) / len(lived), 2),
    )  # fmt: skip
    assert not lost, f"{len(lost)} of {len(source_ids)} records lost"
    assert set(ids) <= source_ids


# --------------------------------------------------------------------------- idempotent consumer

EXAMPLE = ROOT / "examples" / "idempotent_consumer.py"


def test_idempotent_consumer_killed_20_times(
    kafka_broker: str, rng: random.Random, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"chi-{tag}"
    admin.create_topic(kafka_broker, topic, 3)
    db = tmp_path / "ledger.db"
    args = [sys.executable, str(EXAMPLE), "--bootstrap", kafka_broker, "--topic", topic]
    args += ["--group", f"chi-{tag}", "--db", str(db), "--mode", "exactly-once", "--lease", "1"]
    args += ["--commit-every", "25", "--instance-id", f"chi-{tag}", "--handler-delay", "0.005"]
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})

    def send(i: int) -> None:
        # Every payment has a message id; every 4th is sent twice (a retried upstream send).
        for _ in range(2 if i % 4 == 0 else 1):
            producer.produce(
                topic,
                key=f"acct-{i % 7}".encode(),
                value=json.dumps({"n": i, "account": f"acct-{i % 7}", "amount": i}),
                headers=[(h.MESSAGE_ID, f"pay-{i}".encode())],
            )
        producer.poll(0)

    def rows() -> list[tuple[int, int]]:
        if not db.exists():
            return []
        with sqlite3.connect(db, timeout=5) as conn:
            try:
                return list(conn.execute("SELECT partition, offset FROM ledger"))
            except sqlite3.OperationalError:
                return []  # the table is not there yet

    marks = [0]

    def progressed(_: int) -> bool:
        n = len(rows())
        if n > marks[0]:
            marks[0] = n
            return True
        return False

    t0 = time.monotonic()
    with Load(send, rate=80) as load:
        lived = chaos(rng, lambda: Child(args, _env(kafka_broker)), progressed)
    assert producer.flush(30) == 0
    final = subprocess.run(
        [*args, "--idle-timeout", "3"],
        env=_env(kafka_broker),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    by_position: dict[tuple[int, int], int] = {}
    total = admin.describe_topic(kafka_broker, topic).total_records or 0
    # The payment number of every (partition, offset) in the topic.
    c = Consumer(ClientSettings(kafka_broker).consumer_config(f"chi-r-{tag}"))
    parts = [p.partition for p in admin.describe_topic(kafka_broker, topic).partitions]
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    try:

        def read_positions() -> bool:
            for m in c.consume(500, 0.2):
                if m.error() is None:
                    by_position[(m.partition(), m.offset())] = json.loads(m.value())["n"]
            return len(by_position) >= total

        wait_until(read_positions, 60, message="every position read")
    finally:
        c.close()
    counts = Counter(by_position[row] for row in rows())
    lost = set(range(load.sent)) - set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    _report(
        "idempotent consumer", kills=KILLS, payments=load.sent, records=total, lost=len(lost),
        duplicates=duplicates, seconds=round(time.monotonic() - t0, 1),
        mean_life=round(sum(lived) / len(lived), 2),
    )  # fmt: skip
    assert not lost, f"{len(lost)} of {load.sent} payments lost"
    assert duplicates == 0, {n: c for n, c in counts.items() if c > 1}


@pytest.fixture(autouse=True)
def _print_figures(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Show the seed and figures even when the test passes (pytest -s not needed)."""
    yield
    out = capsys.readouterr().out
    if out:
        with capsys.disabled():
            print(out, end="")
