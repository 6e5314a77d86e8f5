"""Backlog fan-out: keyed forwarding, drain by several consumers, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kops import admin
from kops.client import ClientSettings, KopsClientError
from kops.consume import StartAt, consume
from kops.recipes import headers as h
from kops.recipes.fanout import (
    BacklogFanout,
    backlog_status,
    fanout,
    murmur2,
    parse_metadata,
    partition_for_key,
)
from kops.recipes.idempotent import Idempotent
from kops.recipes.parallel import ParallelConsumer
from kops.testing import wait_until

REPO = Path(__file__).resolve().parents[2]
SOURCE_PARTITIONS = 4
KEYS = 400


# --------------------------------------------------------------------------- partitioner


def test_murmur2_matches_the_java_client() -> None:
    # Vectors from Kafka's UtilsTest.testMurmur2.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert murmur2(data) == expected, data


def test_partition_for_key_agrees_with_librdkafka_murmur2(kafka_broker: str) -> None:
    topic = f"m2-{uuid.uuid4().hex[:8]}"
    admin.create_topic(kafka_broker, topic, 24)
    producer = Producer(ClientSettings(kafka_broker).producer_config(**{"partitioner": "murmur2"}))
    for i in range(300):
        producer.produce(topic, key=f"customer-{i}".encode(), value=b"x")
    assert producer.flush(30) == 0
    for r in consume(kafka_broker, topic, start=StartAt.beginning(), idle_timeout=2):
        assert r.partition == partition_for_key(r.key, 24), r.key


# --------------------------------------------------------------------------- helpers


def _produce_backlog(bootstrap: str, topic: str, n: int) -> None:
    """``n`` records over KEYS keys; value ``key|seq`` where seq counts per key."""
    admin.create_topic(bootstrap, topic, SOURCE_PARTITIONS)
    producer = Producer(
        ClientSettings(bootstrap).producer_config(**{"enable.idempotence": True, "linger.ms": 20})
    )
    seq: Counter[int] = Counter()
    for i in range(n):
        k = i % KEYS
        producer.produce(topic, key=f"key-{k}".encode(), value=f"key-{k}|{seq[k]}".encode())
        seq[k] += 1
        if i % 2000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def _commit(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    c = Consumer(ClientSettings(bootstrap).consumer_config(group))
    c.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    c.close()


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer(ClientSettings(bootstrap).consumer_config(group))
    tps = [TopicPartition(topic, p) for p in range(SOURCE_PARTITIONS)]
    found = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10) if tp.offset >= 0}
    c.close()
    return found


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    return list(consume(bootstrap, topic, start=StartAt.beginning(), idle_timeout=2))


def _drain(bootstrap: str, topic: str, group: str, handler: Any, consumers: int = 3) -> None:
    """Several parallel consumers in one group, until the topic is drained."""
    pcs = []
    for _ in range(consumers):
        c = Consumer(
            ClientSettings(bootstrap).consumer_config(
                group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 300}
            )
        )
        pc = ParallelConsumer(c, handler, workers=2, max_in_flight=500)
        pc.subscribe([topic])
        pcs.append(pc)
    # The idle timeout must outlast a rebalance on a loaded machine, or a consumer
    # could give up while partitions it is about to be given still hold records.
    threads = [threading.Thread(target=pc.run, kwargs={"idle_timeout": 6}) for pc in pcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for pc in pcs:
        pc.consumer.close()


class Recorder:
    """Thread-safe record of what drain consumers processed, in processing order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: list[str] = []
        self.partition_of_key: dict[bytes, set[int]] = defaultdict(set)
        self.ids: list[str] = []

    def __call__(self, msg: Any) -> None:
        with self.lock:
            self.values.append(msg.value().decode())
            self.partition_of_key[msg.key()].add(msg.partition())
            self.ids.append(h.get(msg.headers(), h.MESSAGE_ID) or "")


def _assert_key_order(values: list[str]) -> None:
    """Per key, the first time each seq shows up, seqs are increasing."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for v in dict.fromkeys(values):
        key, seq = v.split("|")
        by_key[key].append(int(seq))
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), key


# --------------------------------------------------------------------------- fan-out + drain


def _fanout_and_drain(bootstrap: str, records: int, target_partitions: int) -> None:
    source, target = f"bl-{uuid.uuid4().hex[:8]}", f"fo-{uuid.uuid4().hex[:8]}"
    group, drain_group = f"g-{source}", f"d-{source}"
    _produce_backlog(bootstrap, source, records)
    # The group already consumed the first 500 records of each partition.
    _commit(bootstrap, group, {(source, p): 500 for p in range(SOURCE_PARTITIONS)})
    expected_backlog = records - 500 * SOURCE_PARTITIONS
    progress: list[int] = []

    report = fanout(
        bootstrap,
        source,
        group,
        target,
        target_partitions,
        drain_group=drain_group,
        progress=lambda p: progress.append(p.forwarded),
    )
    assert report.caught_up and report.created_target
    assert report.forwarded == report.backlog == expected_backlog
    assert progress[-1] == expected_backlog
    ends = {p.partition: p.end_offset for p in admin.describe_topic(bootstrap, source).partitions}
    assert report.committed == ends

    rec = Recorder()
    _drain(bootstrap, target, drain_group, rec)
    expected = Counter(r.value.decode() for r in _read_all(bootstrap, source) if r.offset >= 500)
    assert Counter(rec.values) == expected  # nothing lost, nothing doubled
    assert sum(expected.values()) == expected_backlog
    _assert_key_order(rec.values)
    for key, parts in rec.partition_of_key.items():
        assert parts == {partition_for_key(key, target_partitions)}
    assert all(rec.ids)  # every forwarded record carries a message id

    status = backlog_status(bootstrap, group)
    assert status.target == target and status.drain is not None
    assert status.target_partitions == target_partitions
    assert status.source.total_lag == 0 and status.forwarded == expected_backlog
    assert status.drain.total_lag == 0 and status.fanout_progress == 1.0


def test_backlog_fanned_out_and_drained_by_several_consumers(kafka_broker: str) -> None:
    _fanout_and_drain(kafka_broker, 20_000, 32)


@pytest.mark.slow
def test_100k_backlog_fanned_out_to_64_and_drained(kafka_broker: str) -> None:
    _fanout_and_drain(kafka_broker, 100_000, 64)


# --------------------------------------------------------------------------- crash and resume


def test_fanout_killed_midway_resumes_and_duplicates_share_message_ids(
    kafka_broker: str, tmp_path: Path
) -> None:
    source, target = f"bl-{uuid.uuid4().hex[:8]}", f"fo-{uuid.uuid4().hex[:8]}"
    group = f"g-{source}"
    records = 10_000
    _produce_backlog(kafka_broker, source, records)
    env = {**os.environ, "KOPS_BOOTSTRAP": kafka_broker}
    env.pop("KOPS_DEBUG", None)
    base = [sys.executable, "-m", "kops", "backlog", "fanout", "--from", source]
    # --start earliest: the group has committed nothing yet (the rerun resumes from commits).
    base += ["--group", group, "--to", target, "--partitions", "16", "--start", "earliest"]

    # Slow enough that a kill lands mid-way, after some progress was committed.
    proc = subprocess.Popen([*base, "--rate", "2000"], env=env, stderr=subprocess.DEVNULL)
    wait_until(
        lambda: sum(_committed(kafka_broker, group, source).values()) >= 2000,
        30,
        message="the fan-out to commit 2000 records",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    committed = sum(_committed(kafka_broker, group, source).values())
    assert 2000 <= committed < records

    done = subprocess.run(
        [*base, "--until-caught-up", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # It resumed from the last commit: what it forwarded again is what the kill left
    # uncommitted.
    assert report["caught_up"] and report["forwarded"] <= records - committed

    copies = _read_all(kafka_broker, target)
    ids = Counter(h.get(r.headers, h.MESSAGE_ID) for r in copies)
    ends = admin.describe_topic(kafka_broker, source).partitions
    source_ids = {f"{source}/{p.partition}/{o}" for p in ends for o in range(p.end_offset or 0)}
    assert set(ids) == source_ids  # nothing lost
    # Re-forwarded copies are only those acknowledged but not yet committed at the kill.
    assert len(copies) - len(ids) < 3000
    _assert_key_order([r.value.decode() for r in copies])

    # Drain consumers with the idempotent helper apply each source record exactly once.
    effects: list[str] = []
    once = Idempotent(tmp_path / "dedup.db", namespace="drain")
    _drain(kafka_broker, target, f"d-{source}", once(lambda m: effects.append(m.value().decode())))
    assert len(effects) == len(set(effects)) == records
    assert once.stats.duplicates == len(copies) - len(ids)


# --------------------------------------------------------------------------- options


def test_rate_limit_and_existing_target_checks(kafka_broker: str) -> None:
    source, target = f"bl-{uuid.uuid4().hex[:8]}", f"fo-{uuid.uuid4().hex[:8]}"
    _produce_backlog(kafka_broker, source, 600)
    admin.create_topic(kafka_broker, target, 8)
    with pytest.raises(KopsClientError, match="has 8 partitions, not 16"):
        BacklogFanout(kafka_broker, source, "g", target, 16).run(until_caught_up=True)
    with pytest.raises(KopsClientError, match="unknown topic"):
        BacklogFanout(kafka_broker, "no-such-topic", "g", target, 8).run(until_caught_up=True)
    t0 = time.monotonic()
    report = fanout(kafka_broker, source, f"g-{source}", target, 8, rate=1000, start="earliest")
    assert report.forwarded == 600 and time.monotonic() - t0 >= 0.55
    # The commit metadata names the target, for `kops backlog status`.
    c = Consumer(ClientSettings(kafka_broker).consumer_config(f"g-{source}"))
    committed = c.committed([TopicPartition(source, 0)], timeout=10)
    c.close()
    assert parse_metadata(committed[0].metadata) == {
        "to": target,
        "partitions": 8,
        "drain_group": None,
    }


# --------------------------------------------------------------------------- recipe file


def test_recipe_file_fans_out_and_starts_drain_consumers(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kops.worker.recipe import parse_recipe
    from kops.worker.registry import JobContext, job_factory, job_kinds

    assert "backlog-fanout" in job_kinds()
    source = f"bl-{uuid.uuid4().hex[:8]}"
    _produce_backlog(kafka_broker, source, 3000)

    path = REPO / "recipes" / "backlog-fanout.toml"
    data = tomllib.loads(path.read_text())
    job = data["job"][0]
    assert job["kind"] == "backlog-fanout" and job["enabled"] is False  # safe for `kops up`
    job.update(
        enabled=True,
        group=f"g-{source}",
        to=f"{source}.fanout",
        drain_group=f"{source}.drain",
        partitions=8,
        drain_consumers=3,
        drain_workers=2,
        dedup=str(tmp_path / "dedup.db"),
        start="earliest",
    )
    job["from"] = source
    spec = parse_recipe(data, path).jobs[0]
    context = JobContext(ClientSettings(kafka_broker), spec.name, spec.kind, recipe=path)
    runner = job_factory(spec.kind)(dict(spec.options), context)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        printed: list[str] = []

        def finished() -> bool:
            printed.extend(line for line in capsys.readouterr().out.splitlines() if "key=" in line)
            try:
                status = backlog_status(kafka_broker, f"g-{source}")
            except KopsClientError:  # nothing committed yet: the group is unknown
                return False
            drain = status.drain
            return (
                status.forwarded == 3000
                and drain is not None
                and drain.lag is not None
                and drain.total_lag == 0
                and len(drain.lag.partitions) == 8
                and len(printed) >= 3000
            )

        wait_until(
            finished,
            60,
            message=lambda: f"fan-out and drain to finish ({len(printed)} of 3000 printed)",
        )
    finally:
        stop.set()
        thread.join(30)
    assert not runner.errors
    printed += [line for line in capsys.readouterr().out.splitlines() if "key=" in line]
    assert len(printed) == 3000


# --------------------------------------------------------------------------- where to start


def test_group_without_commits_is_refused_unless_a_start_is_given(kafka_broker: str) -> None:
    source, target = f"bl-{uuid.uuid4().hex[:8]}", f"fo-{uuid.uuid4().hex[:8]}"
    group = f"g-{source}"
    _produce_backlog(kafka_broker, source, 600)
    with pytest.raises(KopsClientError, match="no committed offsets") as refused:
        fanout(kafka_broker, source, group, target, 4)
    assert refused.value.code == "NO_COMMITTED_OFFSETS"
    assert "600 records" in str(refused.value)  # what "earliest" would forward
    assert target not in {t.name for t in admin.list_topics(kafka_broker)}  # nothing created
    with pytest.raises(KopsClientError, match="start"):
        BacklogFanout(kafka_broker, source, group, target, 4, start="yesterday-ish")

    # latest: only records produced from now on; nothing of the 600.
    latest = fanout(kafka_broker, source, group, target, 4, start="latest")
    assert latest.caught_up and latest.forwarded == latest.backlog == 0
    # It committed where it started: a later run resumes there without a start, and forwards
    # what was produced in between (nothing skipped).
    assert sum(_committed(kafka_broker, group, source).values()) == 600
    producer = Producer(ClientSettings(kafka_broker).producer_config())
    for i in range(50):
        producer.produce(source, key=f"new-{i}".encode(), value=b"new")
    assert producer.flush(30) == 0
    resumed = fanout(kafka_broker, source, group, target, 4)
    assert resumed.forwarded == 50

    # A time: the first record at or after it, per partition.
    source2, target2 = f"bl-{uuid.uuid4().hex[:8]}", f"fo-{uuid.uuid4().hex[:8]}"
    _produce_backlog(kafka_broker, source2, 300)
    cut = int(time.time() * 1000) + 1
    wait_until(lambda: time.time() * 1000 > cut, 2)
    for i in range(200):
        producer.produce(source2, key=f"late-{i}".encode(), value=b"late")
    assert producer.flush(30) == 0
    timed = fanout(kafka_broker, source2, f"g-{source2}", target2, 4, start=cut)
    assert timed.forwarded == 200
    assert {r.value for r in _read_all(kafka_broker, target2)} == {b"late"}

    # earliest: the whole topic; once committed, later runs resume without a start.
    whole = fanout(kafka_broker, source2, f"g2-{source2}", f"{target2}.all", 4, start="earliest")
    assert whole.forwarded == 500
    again = fanout(kafka_broker, source2, f"g2-{source2}", f"{target2}.all", 4)
    assert again.forwarded == 0 and again.caught_up


def test_worker_job_without_commits_needs_start(kafka_broker: str) -> None:
    from kops.worker.registry import JobContext, RecipeError, job_factory

    source = f"bl-{uuid.uuid4().hex[:8]}"
    _produce_backlog(kafka_broker, source, 100)
    opts = {"from": source, "group": f"g-{source}", "to": f"{source}.fo", "partitions": 4,
            "until_caught_up": True}  # fmt: skip
    context = JobContext(ClientSettings(kafka_broker), "fan", "backlog-fanout")
    job = job_factory("backlog-fanout")(dict(opts), context)
    with pytest.raises(RecipeError, match=r"no committed offsets.*start = 'earliest'"):
        job.run(threading.Event())
    with pytest.raises(RecipeError, match="start"):
        job_factory("backlog-fanout")({**opts, "start": "whenever"}, context)
    job = job_factory("backlog-fanout")({**opts, "start": "earliest"}, context)
    stop = threading.Event()
    thread = threading.Thread(target=job.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: sum(_committed(kafka_broker, f"g-{source}", source).values()) == 100, 30)
    finally:
        stop.set()
        thread.join(30)
    assert not job.errors
