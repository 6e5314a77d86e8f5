"""Keyed parallel processing: throughput against the worker count.

    .venv/bin/python benchmarks/parallel_workers.py
    .venv/bin/python benchmarks/parallel_workers.py --records 4000 --sleep-ms 5 --workers 1,4,16
    .venv/bin/python benchmarks/parallel_workers.py --bootstrap HOST:PORT   # a real cluster

Workload: ``--records`` keyed records (``--keys`` distinct keys) in a 4-partition topic; for
each worker count a fresh consumer group reads them all through
:class:`kops.recipes.parallel.ParallelConsumer` with a handler that sleeps ``--sleep-ms``
(standing in for a database or HTTP call). Prints records/s and the speed-up over one
worker; the ideal is ``workers x 1000 / sleep-ms`` records/s until the key spread, the GIL
or the broker becomes the limit. A benchmark, not a test. Without ``--bootstrap`` it starts
the bundled broker in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Producer

from kops import admin
from kops.client import ClientSettings
from kops.recipes.parallel import ParallelConsumer


@contextlib.contextmanager
def cluster(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from kops.testing import run_broker

    with run_broker() as started:
        yield started


def produce(bootstrap: str, topic: str, records: int, keys: int) -> None:
    producer = Producer(ClientSettings(bootstrap).producer_config(**{"enable.idempotence": True}))
    for i in range(records):
        producer.produce(topic, key=f"key-{i % keys}".encode(), value=str(i).encode())
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise SystemExit("produce did not finish")


def run_once(bootstrap: str, topic: str, records: int, workers: int, sleep_s: float) -> float:
    def handler(msg: object) -> None:
        time.sleep(sleep_s)

    consumer = Consumer(ClientSettings(bootstrap).consumer_config(f"bench-{uuid.uuid4().hex[:8]}"))
    pc = ParallelConsumer(consumer, handler, workers=workers, max_in_flight=max(200, workers * 50))
    pc.subscribe([topic])
    started = time.monotonic()
    first: list[float] = []
    # Time from the first record, so the group join is not counted.
    wrapped = pc.executor.handler

    def timed(msg: object) -> None:
        if not first:
            first.append(time.monotonic())
        wrapped(msg)

    pc.executor.handler = timed
    stats = pc.run(max_records=records)
    consumer.close()
    elapsed = time.monotonic() - (first[0] if first else started)
    return stats.processed / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="use this cluster instead of a bundled broker")
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--sleep-ms", type=float, default=5.0)
    parser.add_argument("--workers", default="1,2,4,8,16,32,64")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    with cluster(args.bootstrap) as bootstrap:
        topic = f"bench-parallel-{uuid.uuid4().hex[:8]}"
        admin.create_topic(bootstrap, topic, 4)
        produce(bootstrap, topic, args.records, args.keys)
        print(
            f"{args.records} records, {args.keys} keys, handler sleeps {args.sleep_ms:g} ms "
            f"(ideal per worker: {1000 / args.sleep_ms:.0f} records/s)"
        )
        print(f"{'workers':>8} {'records/s':>10} {'speed-up':>9} {'efficiency':>11}")
        base = None
        for workers in counts:
            # Fewer records for one worker, or the sweep takes minutes.
            n = min(args.records, max(500, workers * 200))
            rate = run_once(bootstrap, topic, n, workers, args.sleep_ms / 1000)
            base = base or rate / workers
            ideal = workers * 1000 / args.sleep_ms
            print(f"{workers:>8} {rate:>10.0f} {rate / base:>8.1f}x {rate / ideal:>10.0%}")


if __name__ == "__main__":
    main()
