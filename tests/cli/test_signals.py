"""SIGTERM is a clean stop for every long-running ``kops`` command.

Each test runs the real entry point in a subprocess against the test broker, waits on its
output (or on what it did to the broker) until it is working, sends SIGTERM and checks:
exit status 143 (130 for Ctrl-C), no traceback, and for consumers that they left their
group (no members right after exit, so `kops rewind --execute` is not blocked) and that
the committed offsets cover exactly what was printed or processed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.broker.runner import CLEAN_STOP_CODES
from kops.client import ClientSettings
from kops.groups import UnknownGroup, describe_group
from kops.recipes.delay import DelayTiers, send_delayed
from kops.testing import BrokerProcess, wait_until

SIGTERM_EXIT = 128 + signal.SIGTERM  # 143
SIGINT_EXIT = 128 + signal.SIGINT  # 130


class Running:
    """A ``python -m kops ...`` child whose stdout and stderr are read as they come."""

    def __init__(self, *args: str, bootstrap: str, env: dict[str, str] | None = None):
        full_env = {k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"}
        full_env.update({"KOPS_BOOTSTRAP": bootstrap, **(env or {})})
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kops", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.strip()]

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        """Until ``condition()`` holds; fails at once (with stderr) if the child exits."""

        def ready() -> object:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kops {' '.join(self.args)} exited {self.proc.returncode} before {what}:\n"
                    + self.stderr[-3000:]
                )
            return condition()

        wait_until(ready, timeout, message=lambda: f"{what}; stderr:\n{self.stderr[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str, **kwargs: object) -> Running:
        r = Running(*args, **kwargs)  # type: ignore[arg-type]
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def _assert_clean(r: Running, code: int, expected: int = SIGTERM_EXIT) -> None:
    assert code == expected, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def _members(bootstrap: str, group: str) -> tuple[object, ...]:
    try:
        return describe_group(bootstrap, group).members
    except UnknownGroup:
        return ()


def _no_members(bootstrap: str, group: str) -> None:
    """Right after exit, with no waiting: the consumers said LeaveGroup on close."""
    desc = describe_group(bootstrap, group)
    assert desc.members == (), f"{group} still has members: {desc.members}"


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer(ClientSettings(bootstrap).consumer_config(group))
    try:
        found = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in found}


def _produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, v, key=key)
    assert p.flush(30) == 0


def _records(bootstrap: str, topic: str) -> int:
    return admin.describe_topic(bootstrap, topic).total_records


def _tag() -> str:
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- kops consume


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_consume_commits_printed_and_leaves_group(
    kafka_broker: str, running: Callable[..., Running], sig: int
) -> None:
    topic, group = f"sig-c-{_tag()}", f"sig-g-{_tag()}"
    admin.create_topic(kafka_broker, topic, 1)
    _produce(kafka_broker, topic, [f"r{i}".encode() for i in range(5)])
    r = running("consume", topic, "-g", group, "--from-beginning", "--json", bootstrap=kafka_broker)
    r.wait_for(lambda: len(r.lines) >= 5, "5 records printed")
    _assert_clean(r, r.stop(sig), 128 + sig)
    assert "consumed 5 records" in r.stderr
    _no_members(kafka_broker, group)
    assert _committed(kafka_broker, group, topic, 1) == {0: 5}


def test_consume_under_load_commits_exactly_what_was_printed(
    kafka_broker: str, running: Callable[..., Running]
) -> None:
    """SIGTERM while records keep coming: the last printed record is committed, nothing
    after it (at least once, and no gap either)."""
    topic, group = f"sig-c-{_tag()}", f"sig-g-{_tag()}"
    admin.create_topic(kafka_broker, topic, 1)
    r = running("consume", topic, "-g", group, "--from-beginning", "--json", bootstrap=kafka_broker)
    r.wait_for(lambda: _members(kafka_broker, group), "the consumer joined")
    done = threading.Event()

    def load() -> None:
        p = Producer({"bootstrap.servers": kafka_broker, "linger.ms": 0})
        i = 0
        while not done.is_set():
            p.produce(topic, f"r{i}".encode())
            p.poll(0)
            i += 1
            time.sleep(0.002)  # pacing the load, not polling for a condition
        p.flush(10)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        r.wait_for(lambda: len(r.lines) >= 50, "50 records printed")
        code = r.stop()
    finally:
        done.set()
        loader.join(20)
    _assert_clean(r, code)
    printed = [json.loads(line)["offset"] for line in r.lines]
    assert printed == list(range(len(printed)))
    _no_members(kafka_broker, group)
    assert _committed(kafka_broker, group, topic, 1) == {0: len(printed)}
    assert f"consumed {len(printed)} records" in r.stderr


# --------------------------------------------------------------------------- delay worker


def _delay_args(tag: str) -> tuple[DelayTiers, list[str]]:
    tiers = DelayTiers.parse("1s", template=f"sd{tag}.{{tier}}")
    args = ["--tiers", "1s", "--template", tiers.template]
    return tiers, args


def _forward_through(
    bootstrap: str, r: Running, tiers: DelayTiers, dest: str, n: int, marker: str
) -> None:
    r.wait_for(lambda: marker in r.stderr, "the forwarder assigned")
    admin.create_topic(bootstrap, dest, 1)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        send_delayed(producer, dest, f"d{i}".encode(), delay=1, tiers=tiers)
    assert producer.flush(10) == 0
    r.wait_for(lambda: _records(bootstrap, dest) >= n, f"{n} records delivered to {dest}")


def _tier_committed_to_end(bootstrap: str, group: str, tier_topic: str) -> None:
    info = admin.describe_topic(bootstrap, tier_topic)
    ends = {p.partition: p.end_offset for p in info.partitions}
    committed = _committed(bootstrap, group, tier_topic, len(ends))
    assert committed == ends, (committed, ends)


def test_delay_worker_stops_cleanly(kafka_broker: str, running: Callable[..., Running]) -> None:
    tag = _tag()
    tiers, args = _delay_args(tag)
    group = f"sig-dw-{tag}"
    r = running(
        "delay", "worker", "-v", *args, "--group", group, "--cancel-topic", f"sdc{tag}",
        "--stats-topic", f"sds{tag}", bootstrap=kafka_broker,
    )  # fmt: skip
    _forward_through(kafka_broker, r, tiers, f"sdd{tag}", 3, "tier 1s: assigned")
    _assert_clean(r, r.stop())
    assert "delay forwarders stopped" in r.stderr
    assert _records(kafka_broker, f"sdd{tag}") == 3  # nothing forwarded twice
    _no_members(kafka_broker, group)
    _tier_committed_to_end(kafka_broker, group, tiers.topics()[0])


# --------------------------------------------------------------------------- worker run, up


def _recipe(tmp_path: Path, tag: str, group: str) -> Path:
    recipe = tmp_path / "delay.toml"
    recipe.write_text(
        f'[[job]]\nname = "fwd"\nkind = "delay-forwarders"\ntiers = ["1s"]\n'
        f'template = "sd{tag}.{{tier}}"\ngroup = "{group}"\n'
        f'cancel_topic = "sdc{tag}"\nstats_topic = "sds{tag}"\n'
    )
    return recipe


def test_worker_run_stops_cleanly(
    kafka_broker: str, running: Callable[..., Running], tmp_path: Path
) -> None:
    tag = _tag()
    tiers, _ = _delay_args(tag)
    group = f"sig-wr-{tag}"
    recipe = str(_recipe(tmp_path, tag, group))
    r = running("worker", "run", "-v", recipe, bootstrap=kafka_broker)  # -v: assignments
    _forward_through(kafka_broker, r, tiers, f"sdd{tag}", 3, "tier 1s: assigned")
    _assert_clean(r, r.stop())
    assert "worker stopped" in r.stderr
    assert _records(kafka_broker, f"sdd{tag}") == 3
    _no_members(kafka_broker, group)
    _tier_committed_to_end(kafka_broker, group, tiers.topics()[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_up_with_a_running_broker_stops_cleanly(
    kafka_broker: str, running: Callable[..., Running], tmp_path: Path, sig: int
) -> None:
    tag = _tag()
    tiers, _ = _delay_args(tag)
    group = f"sig-up-{tag}"
    r = running(
        "up", "-vv", "--bootstrap", kafka_broker, str(_recipe(tmp_path, tag, group)),
        bootstrap=kafka_broker,
    )  # fmt: skip
    r.wait_for(lambda: "kops up: running" in r.stdout, "kops up running")
    _forward_through(kafka_broker, r, tiers, f"sdd{tag}", 2, "tier 1s: assigned")
    _assert_clean(r, r.stop(sig), 128 + sig)
    assert "kops up: stopped" in r.stderr
    _no_members(kafka_broker, group)
    _tier_committed_to_end(kafka_broker, group, tiers.topics()[0])


# --------------------------------------------------------------------------- backlog fanout


def test_backlog_fanout_commits_what_it_forwarded(
    kafka_broker: str, running: Callable[..., Running]
) -> None:
    tag = _tag()
    source, group, target = f"sbf{tag}", f"sig-bf-{tag}", f"sbf{tag}.fo"
    admin.create_topic(kafka_broker, source, 2)
    _produce(kafka_broker, source, [f"v{i}".encode() for i in range(3000)])
    r = running(
        "backlog", "fanout", "--from", source, "-g", group, "--to", target, "-p", "4",
        "--rate", "500", "--start", "earliest", bootstrap=kafka_broker,
    )  # fmt: skip
    r.wait_for(
        lambda: (
            target in {t.name for t in admin.list_topics(kafka_broker)}
            and _records(kafka_broker, target) > 0
        ),
        "records forwarded to the target",
    )
    _assert_clean(r, r.stop())
    assert "progress committed on group" in r.stderr
    _no_members(kafka_broker, group)
    committed = sum(max(o, 0) for o in _committed(kafka_broker, group, source, 2).values())
    forwarded = _records(kafka_broker, target)
    assert 0 < committed < 3000
    assert committed == forwarded  # a clean stop commits exactly what was forwarded


# --------------------------------------------------------------------------- replay


def test_replay_flushes_what_it_read(kafka_broker: str, running: Callable[..., Running]) -> None:
    tag = _tag()
    source, into = f"srp{tag}", f"srp{tag}.copy"
    admin.create_topic(kafka_broker, source, 1)
    _produce(kafka_broker, source, [f"v{i}".encode() for i in range(2000)])
    r = running(
        "replay", source, "--from", "1h", "--into", into, "--create", "--rate", "200", "--json",
        bootstrap=kafka_broker,
    )  # fmt: skip
    r.wait_for(
        lambda: (
            into in {t.name for t in admin.list_topics(kafka_broker)}
            and _records(kafka_broker, into) > 0
        ),
        "records copied",
    )
    _assert_clean(r, r.stop())
    assert "replay stopped after reading" in r.stderr
    read = int(r.stderr.split("replay stopped after reading ")[1].split()[0])
    copied = _records(kafka_broker, into)
    assert 0 < copied < 2000
    assert copied == read  # every record read was delivered before the exit
    report = json.loads(r.stdout)  # the partial report, printed before the exit
    assert report["partial"] is True
    assert report["read"] == report["copied"] == copied and report["failed"] == 0


def test_idle_replay_stops_at_once(kafka_broker: str, running: Callable[..., Running]) -> None:
    """A replay waiting for records that do not come (the broker holds each fetch for 40 s:
    fetch.min.bytes is never reached) stops on SIGTERM at once, not at its 30 s stall
    timeout, and prints its (empty) partial report."""
    tag = _tag()
    source, into = f"sri{tag}", f"sri{tag}.copy"
    admin.create_topic(kafka_broker, source, 1)
    _produce(kafka_broker, source, [f"v{i}".encode() for i in range(20)])
    r = running(
        "replay", source, "--from", "1h", "--into", into, "--create", "--json",
        "-X", "fetch.min.bytes=100000000", "-X", "fetch.wait.max.ms=40000",
        bootstrap=kafka_broker, env=_BAR,
    )  # fmt: skip
    r.wait_for(
        lambda: (
            f"replay {source}" in r.stderr
            and into in {t.name for t in admin.list_topics(kafka_broker)}
        ),
        "the replay reading",
    )
    sent = time.monotonic()
    code = r.stop()
    took = time.monotonic() - sent
    _assert_clean(r, code)
    assert took < 5, f"took {took:.1f}s to stop"
    report = json.loads(r.stdout)
    assert report["partial"] is True and report["copied"] == 0
    assert _records(kafka_broker, into) == 0


# --------------------------------------------------------------------------- lag --watch


def test_lag_watch_stops_cleanly(kafka_broker: str, running: Callable[..., Running]) -> None:
    tag = _tag()
    topic, group = f"slg{tag}", f"sig-lag-{tag}"
    admin.create_topic(kafka_broker, topic, 1)
    _produce(kafka_broker, topic, [b"a", b"b"])
    c = Consumer(ClientSettings(kafka_broker).consumer_config(group))
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    c.close()
    r = running("lag", group, "--watch", "--json", "-i", "0.2", bootstrap=kafka_broker)
    r.wait_for(lambda: len(r.lines) >= 2, "two refreshes")
    _assert_clean(r, r.stop())
    docs = [json.loads(line) for line in r.lines]
    assert docs[0][0]["group"] == group and docs[0][0]["total_lag"] == 1


# --------------------------------------------------------------------------- bench


def _bench_topics(bootstrap: str) -> set[str]:
    return {t.name for t in admin.list_topics(bootstrap) if t.name.startswith("kops-bench-")}


# The progress bar only draws on a terminal; TTY_COMPATIBLE=1 makes rich draw it on the
# pipe too, so the test can see which phase the bench is in.
_BAR = {"TTY_COMPATIBLE": "1"}


def test_bench_produce_stops_and_deletes_its_scratch_topic(
    kafka_broker: str, running: Callable[..., Running]
) -> None:
    before = _bench_topics(kafka_broker)
    r = running(
        "bench", "produce", "-n", "1000000", "-s", "10", "--throughput", "5000",
        bootstrap=kafka_broker, env=_BAR,
    )  # fmt: skip
    r.wait_for(lambda: "produce" in r.stderr and _bench_topics(kafka_broker) - before, "producing")
    _assert_clean(r, r.stop())
    assert "bench stopped before it finished: partial figures" in r.stderr
    assert _bench_topics(kafka_broker) - before == set()
    assert "records sent" in r.stderr  # the figures so far


def test_bench_produce_throttled_stops_within_a_second_with_partial_json(
    kafka_broker: str, running: Callable[..., Running]
) -> None:
    """--throughput 0.5: the producer waits 2 s between records; SIGTERM wakes it."""
    before = _bench_topics(kafka_broker)
    r = running(
        "bench", "produce", "-n", "100", "-s", "10", "--throughput", "0.5", "--json",
        bootstrap=kafka_broker, env=_BAR,
    )  # fmt: skip
    r.wait_for(
        lambda: (
            "produce" in r.stderr
            and any(_records(kafka_broker, t) >= 1 for t in _bench_topics(kafka_broker) - before)
        ),
        "the first record sent",
    )
    sent = time.monotonic()
    code = r.stop()
    took = time.monotonic() - sent
    _assert_clean(r, code)
    assert took < 1.5, f"took {took:.1f}s to stop"
    result = json.loads(r.stdout)
    assert result["partial"] is True
    assert 1 <= result["records"] < 100 and result["errors"] == 0
    assert _bench_topics(kafka_broker) - before == set()


def test_bench_consume_stops_cleanly(kafka_broker: str, running: Callable[..., Running]) -> None:
    topic = f"sbc{_tag()}"
    admin.create_topic(kafka_broker, topic, 2)
    _produce(kafka_broker, topic, [b"x" * 10] * 100)
    # Asks for more records than there are, so it keeps consuming until stopped.
    r = running(
        "bench", "consume", topic, "-n", "1000000", "-c", "2", "--timeout", "120", "--json",
        bootstrap=kafka_broker, env=_BAR,
    )  # fmt: skip
    r.wait_for(lambda: "consume" in r.stderr and "100/1000000" in r.stderr, "100 consumed")
    _assert_clean(r, r.stop())
    assert "bench stopped before it finished: partial figures" in r.stderr
    result = json.loads(r.stdout)
    assert result["partial"] is True and result["records"] == 100


def test_bench_sweep_stops_and_deletes_its_topics(
    kafka_broker: str, running: Callable[..., Running]
) -> None:
    before = _bench_topics(kafka_broker)
    r = running(
        "bench", "sweep", "-p", "1,2", "-n", "5000000", "-s", "10", "--json",
        bootstrap=kafka_broker, env=_BAR,
    )  # fmt: skip
    r.wait_for(lambda: "1 partitions: produce" in r.stderr, "the first sweep point producing")
    _assert_clean(r, r.stop())
    assert "bench stopped before it finished: partial figures" in r.stderr
    assert "0 of 2 partition counts measured" in r.stderr
    assert _bench_topics(kafka_broker) - before == set()
    result = json.loads(r.stdout)
    assert result["partial"] is True and result["points"] == []
    assert result["recommendation"] is None


# --------------------------------------------------------------------------- broker start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_broker_start_stops_cleanly(
    running: Callable[..., Running], tmp_path: Path, sig: int
) -> None:
    """`kops broker start` (its own broker, whatever KOPS_TEST_BOOTSTRAP says) exits
    143 / 130 like the other commands, after a clean shutdown that served a real client."""
    r = running(
        "broker", "start", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
        bootstrap="unused:9092",
    )  # fmt: skip
    r.wait_for(lambda: "listening on" in r.stdout, "the broker listening")
    bootstrap = r.stdout.split("listening on ")[1].split()[0]
    topic = f"sbs{_tag()}"
    admin.create_topic(bootstrap, topic, 1)
    _produce(bootstrap, topic, [b"a", b"b"])
    assert _records(bootstrap, topic) == 2
    _assert_clean(r, r.stop(sig), 128 + sig)
    assert (tmp_path / ".kafka_cleanshutdown").exists()


def test_broker_process_stop_reports_the_clean_exit(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "broker")
    bootstrap = broker.start()
    try:
        _produce(bootstrap, f"sbp{_tag()}", [b"x"])
    finally:
        code = broker.stop()
    assert code == SIGTERM_EXIT and code in CLEAN_STOP_CODES
    assert broker.stop() == SIGTERM_EXIT  # already stopped: the same status again
