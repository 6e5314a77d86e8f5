"""Replication on a three-broker cluster: throughput, failover, a restart back into the ISR.

    .venv/bin/python benchmarks/cluster_replication.py                  # the defaults
    .venv/bin/python benchmarks/cluster_replication.py --restart-gib 1  # the issue's 1 GiB
    .venv/bin/python benchmarks/cluster_replication.py --records 0 --restart-gib 0 \
        --failovers 20                                                  # failover alone

Three `kops broker start` processes on one machine, every one a voter:

1. Produce throughput, 6 partitions: replication factor 3 with acks=all against
   replication factor 1 with acks=1, the same records in the same run; the ratio.
   (The three brokers share the machine's cores, so this is the cost of copying
   every record twice more on the same CPUs, not of a network.)
2. Failover with default client and broker settings: SIGKILL of a partition leader
   while a producer writes 200 records/s, to the first record acknowledged after it
   (necessarily by the new leader). Repeated --failovers times, every other time
   killing a leader that is the controller too.
3. A follower with --restart-gib of replicated log is killed, misses a little, and
   is restarted: the time until it is back in the ISR.

Prints figures; asserts nothing (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kops.admin import describe_cluster_brokers
from kops.broker.runner import BrokerProcess
from kops.testing import free_ports, wait_until


class Cluster:
    def __init__(self, root: Path, config: dict[str, str] | None = None) -> None:
        base = free_ports(3)
        self.ports = {n: base + n - 1 for n in (1, 2, 3)}
        voters = ",".join(f"{n}@127.0.0.1:{p}" for n, p in self.ports.items())
        self.brokers = {
            n: BrokerProcess(
                root / f"node{n}",
                port=port,
                config={"node.id": str(n), "controller.quorum.voters": voters, **(config or {})},
                extra_args=["--log-level", "WARNING"],
            )
            for n, port in self.ports.items()
        }
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports.values())

    def start(self) -> None:
        for broker in self.brokers.values():
            broker.start()
        self.wait_active({1, 2, 3})

    def wait_active(self, nodes: set[int]) -> None:
        def active() -> bool:
            for n in self.live():
                try:
                    _, brokers = describe_cluster_brokers(f"127.0.0.1:{self.ports[n]}")
                except Exception:
                    continue
                return {b.node_id for b in brokers if not b.fenced} == nodes
            return False

        wait_until(active, timeout=60)

    def live(self) -> list[int]:
        return [n for n, b in self.brokers.items() if b.process is not None and b.exited() is None]

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create(self, topic: str, partitions: int, rf: int, **config: str) -> None:
        admin = self.admin()
        admin.create_topics([NewTopic(topic, partitions, rf, config=config)])[topic].result(30)
        wait_until(lambda: self.partition(topic, 0) is not None, timeout=30)

    def partition(self, topic: str, index: int):  # type: ignore[no-untyped-def]
        metadata = self.admin().list_topics(topic, timeout=10)
        t = metadata.topics.get(topic)
        return None if t is None or t.error is not None else t.partitions.get(index)

    def close(self) -> None:
        for broker in self.brokers.values():
            broker.kill()


def throughput(
    cluster: Cluster, topic: str, count: int, size: int, acks: str, partitions: int = 6
) -> float:
    failures: list[object] = []
    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "acks": acks,
            "linger.ms": 5,
            "enable.idempotence": acks == "all",
            "queue.buffering.max.messages": 200_000,
        }
    )
    payload = b"x" * size
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(
                    topic,
                    payload,
                    partition=i % partitions,
                    on_delivery=lambda err, _m: failures.append(err) if err else None,
                )
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0 and not failures, failures[:3]
    return count / (time.perf_counter() - started)


def failover(cluster: Cluster, topic: str, controller_too: bool) -> tuple[float, bool]:
    """(seconds from SIGKILL of a partition's leader to the first record acknowledged after
    it, whether the killed broker was the controller too: then an election comes first).

    `topic` has one partition per broker; the producer writes to one led by the controller
    (`controller_too`) or by another broker, so both cases are measured every run."""
    client = cluster.admin()  # kept: a future outlives no AdminClient
    controller = client.describe_cluster().result(timeout=10).controller.id
    leaders = {p: cluster.partition(topic, p).leader for p in range(3)}
    chosen = [p for p, leader in leaders.items() if (leader == controller) == controller_too]
    if not chosen:  # every partition led by the controller, or none: take what there is
        chosen = list(leaders)
    partition = chosen[0]
    leader = leaders[partition]
    acked: list[float] = []
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            producer.produce(
                topic,
                b"r",
                partition=partition,
                on_delivery=lambda e, _m: e or acked.append(time.monotonic()),
            )
            producer.poll(0.005)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: len(acked) > 50, timeout=30)
    killed = time.monotonic()
    cluster.brokers[leader].kill()
    wait_until(lambda: acked and acked[-1] > killed, timeout=60)
    took = next(t for t in acked if t > killed) - killed
    stop.set()
    thread.join()
    producer.flush(30)
    cluster.brokers[leader].start()
    cluster.wait_active({1, 2, 3})
    wait_until(
        lambda: all(len(cluster.partition(topic, p).isrs) == 3 for p in range(3)), timeout=120
    )
    return took, leader == controller


def restart(cluster: Cluster, gib: float) -> tuple[float, float]:
    """(seconds to write `gib` GiB, seconds from a follower's restart until it is in the ISR)."""
    cluster.create("bulk", 3, 3, **{"min.insync.replicas": "2"})
    size = 16 * 1024
    count = int(gib * 1024**3 / size)
    started = time.perf_counter()
    throughput(cluster, "bulk", count, size, "all", partitions=3)
    written = time.perf_counter() - started
    leader = cluster.partition("bulk", 0).leader
    victim = next(n for n in cluster.brokers if n != leader)
    cluster.brokers[victim].kill()
    throughput(cluster, "bulk", 3000, size, "all", partitions=3)  # missed while it is down
    began = time.monotonic()
    cluster.brokers[victim].start()
    wait_until(
        lambda: all(victim in cluster.partition("bulk", p).isrs for p in range(3)), timeout=600
    )
    return written, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--restart-gib", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        cluster = Cluster(Path(root))
        try:
            cluster.start()
            if args.records:
                cluster.create("rf1", 6, 1)
                cluster.create("rf3", 6, 3, **{"min.insync.replicas": "2"})
                one = throughput(cluster, "rf1", args.records, args.size, "1")
                three = throughput(cluster, "rf3", args.records, args.size, "all")
                print(f"produce {args.records} x {args.size} B, 6 partitions:")
                print(f"  RF 1, acks=1:   {one:>10,.0f} records/s")
                print(f"  RF 3, acks=all: {three:>10,.0f} records/s  (ratio {three / one:.2f})")

            cluster.create("failover", 3, 3)
            runs = [failover(cluster, "failover", i % 2 == 1) for i in range(args.failovers)]
            times = [took for took, _ in runs]
            print(
                f"failover, SIGKILL of the leader to the next acknowledged produce "
                f"({len(times)} runs): median {statistics.median(times):.2f} s, "
                f"max {max(times):.2f} s"
            )
            for label, was_controller in (("leader only", False), ("leader+controller", True)):
                some = [took for took, c in runs if c == was_controller]
                if some:
                    print(
                        f"  {label:<17} {len(some):>2} runs: median "
                        f"{statistics.median(some):.2f} s, max {max(some):.2f} s"
                    )

            if args.restart_gib:
                written, back = restart(cluster, args.restart_gib)
                print(
                    f"restart: {args.restart_gib:g} GiB written in {written:.1f} s; a "
                    f"restarted follower is back in the ISR {back:.1f} s after its start"
                )
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
