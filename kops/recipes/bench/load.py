"""Load tests in the spirit of ``kafka-producer-perf-test`` and ``kafka-consumer-perf-test``.

N records of a fixed size, an optional target rate, and records/s, MB/s (MB = 2**20 bytes,
as Kafka's tools) and latency percentiles.

- Produce latency is librdkafka's per-message latency: from ``produce()`` to the broker's
  acknowledgement (what Kafka's tool reports).
- Consume latency is each record's age when it reaches the consumer (now - its create
  time): end-to-end latency while consuming live, the backlog's age when draining one.

The partition-count sweep built on these is in :mod:`kops.recipes.bench.sweep`.

Example::

    from kops.recipes.bench import bench_consume, bench_produce
    print(bench_produce(bootstrap, "perf", records=100_000, record_size=1024).summary())
    print(bench_consume(bootstrap, "perf", consumers=2).summary())
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from kops import admin as topics_admin
from kops.client import ClientSettings, ErrorWatch, KopsClientError, fetch_metadata, translate_error
from kops.produce import produce_with_room
from kops.recipes.pacing import Pacer

__all__ = [
    "MB",
    "BenchResult",
    "LatencyStats",
    "Progress",
    "bench_consume",
    "bench_produce",
]

MB = 1024 * 1024
#: (phase, done, total): how the benches report progress.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds."""

    avg: float
    max: float
    p50: float
    p95: float
    p99: float
    p999: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> LatencyStats | None:
        if not samples_ms:
            return None
        ordered = sorted(samples_ms)

        def pct(q: float) -> float:
            # Nearest rank, as Kafka's perf tool.
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return cls(
            avg=sum(ordered) / len(ordered),
            max=ordered[-1],
            p50=pct(0.50),
            p95=pct(0.95),
            p99=pct(0.99),
            p999=pct(0.999),
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "avg_ms": round(self.avg, 3),
            "max_ms": round(self.max, 3),
            "p50_ms": round(self.p50, 3),
            "p95_ms": round(self.p95, 3),
            "p99_ms": round(self.p99, 3),
            "p999_ms": round(self.p999, 3),
        }


@dataclass
class BenchResult:
    kind: Literal["produce", "consume"]
    topic: str
    records: int
    bytes: int
    elapsed: float
    latency: LatencyStats | None
    errors: int = 0
    partitions: int = 0
    consumers: int = 0
    first_error: str | None = None
    #: Consume only: seconds from start to the first fetch that returned records (not
    #: counted in ``elapsed``).
    startup: float | None = None
    #: Stopped (``stop`` set) before the run finished: the figures cover what was done.
    partial: bool = False

    @property
    def records_per_sec(self) -> float:
        return self.records / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_per_sec(self) -> float:
        return self.bytes / MB / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        """One line in the format of Kafka's perf tools."""
        verb = "sent" if self.kind == "produce" else "consumed"
        line = (
            f"{self.records} records {verb}, {self.records_per_sec:.1f} records/sec "
            f"({self.mb_per_sec:.2f} MB/sec)"
        )
        lat = self.latency
        if lat is not None:
            line += (
                f", {lat.avg:.2f} ms avg latency, {lat.max:.2f} ms max latency, "
                f"{lat.p50:.0f} ms 50th, {lat.p95:.0f} ms 95th, {lat.p99:.0f} ms 99th, "
                f"{lat.p999:.0f} ms 99.9th."
            )
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "topic": self.topic,
            "partitions": self.partitions,
            "consumers": self.consumers if self.kind == "consume" else None,
            "records": self.records,
            "bytes": self.bytes,
            "elapsed_seconds": round(self.elapsed, 4),
            "startup_seconds": None if self.startup is None else round(self.startup, 4),
            "records_per_sec": round(self.records_per_sec, 2),
            "mb_per_sec": round(self.mb_per_sec, 4),
            "latency": None if self.latency is None else self.latency.to_dict(),
            "errors": self.errors,
            "first_error": self.first_error,
            "partial": self.partial,
        }


def _payload(size: int) -> bytes:
    # Random uppercase letters, as kafka-producer-perf-test: compressible like text is.
    rng = random.Random(42)
    return bytes(rng.randrange(65, 91) for _ in range(size))


def bench_produce(
    target: ClientSettings | str,
    topic: str,
    *,
    records: int,
    record_size: int = 100,
    throughput: float | None = None,
    acks: str = "all",
    batch_size: int | None = None,
    linger_ms: float | None = None,
    compression: str | None = None,
    config: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> BenchResult:
    """Send ``records`` records of ``record_size`` bytes (no key) and measure.

    ``throughput`` caps records per second (None: as fast as possible). Batch settings map to
    librdkafka's ``batch.size`` and ``linger.ms``. Delivery failures are counted, not raised.
    ``stop`` set (e.g. by a SIGTERM handler) ends the run early, also in the middle of a
    throttled wait: what was sent is flushed and measured, and the result is ``partial``.
    """
    if records < 1 or record_size < 0:
        raise KopsClientError("records must be >= 1 and the record size >= 0")
    settings = ClientSettings.of(target)
    extra: dict[str, Any] = {"acks": acks}
    if batch_size is not None:
        extra["batch.size"] = batch_size
    if linger_ms is not None:
        extra["linger.ms"] = linger_ms
    if compression is not None:
        extra["compression.type"] = compression
    extra.update(config or {})
    watch = ErrorWatch(settings.bootstrap)
    producer = Producer(settings.producer_config(watch, **extra))
    md = fetch_metadata(producer, watch, settings.timeout, topic)
    n_partitions = len(md.topics[topic].partitions)

    payload = _payload(record_size)
    latencies: list[float] = []
    state = {"acked": 0, "errors": 0, "bytes": 0}
    first_error: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            state["errors"] += 1
            if not first_error:
                first_error.append(f"{err.str()} ({err.name()})")
            return
        state["acked"] += 1
        state["bytes"] += len(msg.value() or b"")
        latency = msg.latency()
        if latency is not None:
            latencies.append(latency * 1000)

    started = time.monotonic()
    step = max(records // 200, 1)
    pacer = Pacer(throughput, stop=stop)  # an even rate, no bursts; woken by stop
    partial = False
    for i in range(records):
        if stop is not None and stop.is_set():
            partial = True
            break
        pacer.pace()
        if stop is not None and stop.is_set():
            partial = True
            break
        produce_with_room(producer, topic, payload, on_delivery=on_delivery, poll_timeout=0.05)
        producer.poll(0)
        if i % step == 0:
            watch.check()
            if progress is not None:
                progress("produce", i, records)
    left = producer.flush(settings.timeout + 30)
    elapsed = time.monotonic() - started
    if progress is not None and not partial:
        progress("produce", records, records)
    return BenchResult(
        kind="produce",
        topic=topic,
        records=state["acked"],
        bytes=state["bytes"],
        elapsed=elapsed,
        latency=LatencyStats.of(latencies),
        errors=state["errors"] + left,
        partitions=n_partitions,
        first_error=first_error[0] if first_error else None,
        partial=partial,
    )


def bench_consume(
    target: ClientSettings | str,
    topic: str,
    *,
    records: int | None = None,
    consumers: int = 1,
    timeout: float = 10.0,
    fetch_max_bytes: int | None = None,
    config: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> BenchResult:
    """Read ``records`` records (default: all retained when it starts) from the beginning with
    ``consumers`` consumers, each assigned a share of the partitions, and measure.

    Partitions are assigned directly (no group join, nothing committed), so the figure is
    fetch throughput, not rebalance time. Stops early after ``timeout`` seconds without a
    record. Consumers run as threads in this process; librdkafka fetches in its own threads.
    ``stop`` set (e.g. by a SIGTERM handler) ends the run early: the consumers close and the
    figures so far are returned, marked ``partial``.
    """
    if consumers < 1:
        raise KopsClientError("consumers must be at least 1")
    settings = ClientSettings.of(target)
    info = topics_admin.describe_topic(settings, topic)
    parts = [p.partition for p in info.partitions]
    if records is None:
        records = sum(p.records or 0 for p in info.partitions)
    if records <= 0:
        raise KopsClientError(f"topic {topic!r} has no records to consume")
    extra: dict[str, Any] = {}
    if fetch_max_bytes is not None:
        extra["fetch.max.bytes"] = fetch_max_bytes
    extra.update(config or {})

    shares = [parts[i::consumers] for i in range(consumers)]
    lock = threading.Lock()
    done = threading.Event()
    totals = {"records": 0, "bytes": 0}
    latencies: list[float] = []
    failures: list[BaseException] = []
    last_record = [time.monotonic()]
    first_record: list[float] = []

    def run(share: list[int]) -> None:
        if not share:
            return  # more consumers than partitions: this one idles, as in a real group
        watch = ErrorWatch(settings.bootstrap)
        consumer = Consumer(
            settings.consumer_config(f"kops-bench-{uuid.uuid4().hex[:12]}", watch, **extra)
        )
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in share])
            while not done.is_set():
                batch_started = time.monotonic()
                batch = consumer.consume(num_messages=1000, timeout=0.2)
                if not batch:
                    watch.check()
                    if time.monotonic() - last_record[0] > timeout:
                        done.set()
                    continue
                now_ms = time.time() * 1000
                n = size = 0
                ages = []
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.retriable() or err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise translate_error(KafkaException(err), "consume", topic)
                    n += 1
                    size += len(msg.value() or b"") + len(msg.key() or b"")
                    ts_type, ts = msg.timestamp()
                    if ts_type != TIMESTAMP_NOT_AVAILABLE:
                        ages.append(max(now_ms - ts, 0.0))
                with lock:
                    if not first_record:
                        first_record.append(batch_started)
                    totals["records"] += n
                    totals["bytes"] += size
                    latencies.extend(ages)
                    last_record[0] = time.monotonic()
                    if totals["records"] >= records:
                        done.set()
        except BaseException as exc:
            failures.append(exc)
            done.set()
        finally:
            consumer.close()

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in shares]
    started = time.monotonic()
    last_record[0] = started
    for t in threads:
        t.start()
    partial = False
    while any(t.is_alive() for t in threads):
        if stop is not None and stop.is_set() and not done.is_set():
            partial = totals["records"] < records
            done.set()
        if progress is not None:
            progress("consume", min(totals["records"], records), records)
        done.wait(0.1)
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    # Like kafka-consumer-perf-test's fetch.MB.sec: connecting and the first fetch's wait are
    # startup, not throughput (they dominate short runs).
    fetch_started = first_record[0] if first_record else started
    elapsed = max(last_record[0] - fetch_started, 1e-6)
    if progress is not None:
        progress("consume", min(totals["records"], records), records)
    return BenchResult(
        kind="consume",
        topic=topic,
        records=totals["records"],
        bytes=totals["bytes"],
        elapsed=elapsed,
        latency=LatencyStats.of(latencies),
        partitions=len(parts),
        consumers=consumers,
        startup=fetch_started - started,
        partial=partial,
    )
