"""Group coordinator latency: first join and rebalance, with confluent-kafka consumers.

    .venv/bin/python benchmarks/group_latency.py [--runs 5]

- Join latency: from subscribe() of a group's first member to its assignment
  (the on_assign callback), with `group.initial.rebalance.delay.ms` at Kafka's
  default 3000 and at 0. Aim: the delay plus under 0.5 s.
- Rebalance latency: two members share a 12-partition topic that a producer
  keeps writing to; a third subscribes. Measured from its subscribe() until all
  three hold their new assignment, and until each has received a record under
  it ("consuming"). Existing members only learn of a rebalance from their next
  heartbeat, so the client's heartbeat.interval.ms dominates it (on average
  half an interval, at worst a whole one); shown for the librdkafka default
  (3000 ms) and for 500 ms. Aim: under 1 s plus that interval.

A benchmark, not a test: prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kops.testing import run_broker

REBALANCE_PARTITIONS = 12


class Member:
    """A consumer polled by its own thread, timing assignments and first records."""

    def __init__(self, bootstrap: str, group: str, topic: str, heartbeat_ms: int) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": heartbeat_ms,
                "fetch.wait.max.ms": 20,
            }
        )
        self.assignments: list[tuple[float, list[int]]] = []
        self.first_record_after: dict[int, float] = {}  # assignment index -> time
        self._stop = threading.Event()
        self.subscribed_at = time.monotonic()
        self.consumer.subscribe([topic], on_assign=self._on_assign)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        self.assignments.append((time.monotonic(), sorted(p.partition for p in partitions)))

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.consumer.poll(0.01)
            if msg is not None and msg.error() is None and self.assignments:
                self.first_record_after.setdefault(len(self.assignments) - 1, time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.002)


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(10)


def join_latency(delay_ms: int, runs: int) -> list[float]:
    samples = []
    with run_broker(config={"group.initial.rebalance.delay.ms": str(delay_ms)}) as bootstrap:
        topic = f"join-{uuid.uuid4().hex[:6]}"
        create_topic(bootstrap, topic, 6)
        for _ in range(runs + 1):
            member = Member(bootstrap, f"g-{uuid.uuid4().hex[:8]}", topic, 3000)
            wait_for(lambda m=member: m.assignments)
            samples.append(member.assignments[0][0] - member.subscribed_at)
            member.close()
    return samples[1:]  # the first run also pays for connection setup and metadata


def rebalance_latency(heartbeat_ms: int, runs: int) -> list[tuple[float, float]]:
    with run_broker(config={"group.initial.rebalance.delay.ms": "0"}) as bootstrap:
        return [_one_rebalance(bootstrap, heartbeat_ms) for _ in range(runs)]


def _one_rebalance(bootstrap: str, heartbeat_ms: int) -> tuple[float, float]:
    topic = f"reb-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, REBALANCE_PARTITIONS)
    stop = threading.Event()
    producer_thread = threading.Thread(
        target=_produce_forever, args=(bootstrap, topic, stop), daemon=True
    )
    producer_thread.start()
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = Member(bootstrap, group, topic, heartbeat_ms)
    b = Member(bootstrap, group, topic, heartbeat_ms)
    wait_for(lambda: _owned(a) and _owned(b) and len(_owned(a) | _owned(b)) == REBALANCE_PARTITIONS)
    # Join at a random point of the members' heartbeat cycle, as a real
    # newcomer would, rather than in phase with it.
    time.sleep(1 + random.uniform(0, heartbeat_ms / 1000))
    before = (len(a.assignments), len(b.assignments))
    c = Member(bootstrap, group, topic, heartbeat_ms)
    start = c.subscribed_at
    members = (a, b, c)
    wait_for(
        lambda: (
            len(a.assignments) > before[0]
            and len(b.assignments) > before[1]
            and all(_owned(m) for m in members)
        )
    )
    assigned = max(m.assignments[-1][0] for m in members) - start
    wait_for(lambda: all(len(m.assignments) - 1 in m.first_record_after for m in members))
    consuming = max(m.first_record_after[len(m.assignments) - 1] for m in members) - start
    for m in members:
        m.close()
    stop.set()
    producer_thread.join(10)
    return assigned, consuming


def _owned(member: Member) -> set[int]:
    return set(member.assignments[-1][1]) if member.assignments else set()


def _produce_forever(bootstrap: str, topic: str, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    i = 0
    while not stop.is_set():
        producer.produce(topic, value=b"x", partition=i % REBALANCE_PARTITIONS)
        producer.poll(0)
        i += 1
        time.sleep(0.001)  # ~1000 records/s: every partition sees one every ~12 ms
    producer.flush(10)


def describe(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:7.0f} ms   "
        f"min {min(values) * 1000:6.0f}   max {max(values) * 1000:6.0f}   (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    print("Join latency: subscribe() of the first member -> its assignment")
    for delay in (3000, 0):
        print(
            f"  group.initial.rebalance.delay.ms={delay:<5} {describe(join_latency(delay, args.runs))}"
        )

    print(
        f"Rebalance latency: third member joins a {REBALANCE_PARTITIONS}-partition group (delay 0)"
    )
    for heartbeat in (3000, 500):
        samples = rebalance_latency(heartbeat, args.runs)
        print(
            f"  heartbeat.interval.ms={heartbeat:<5} all assigned:  {describe([s[0] for s in samples])}"
        )
        print(f"  {'':27} all consuming: {describe([s[1] for s in samples])}")


if __name__ == "__main__":
    main()
