"""Transactional produce against plain idempotent produce, on one `kops broker start`.

    .venv/bin/python benchmarks/transactions.py
    .venv/bin/python benchmarks/transactions.py --records 200000 --per-txn 1000
    .venv/bin/python benchmarks/transactions.py --bootstrap HOST:PORT,... --replication-factor 3

The same records (100 B, 6 partitions, linger.ms=5, acks=all) are written twice in
the same run: by an idempotent producer, then by a transactional one committing
every --per-txn records (each commit waits for its markers), after an unmeasured
warm-up. Then each topic is read back, the plain one read_uncommitted and the
transactional one read_committed, to show what markers and the last stable offset
cost a reader. Prints records/s and the ratio; asserts nothing (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from kops import admin
from kops.broker.runner import BrokerProcess

PARTITIONS = 6


def _produce(bootstrap: str, topic: str, count: int, size: int, per_txn: int | None) -> float:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "enable.idempotence": True,
        "queue.buffering.max.messages": 200_000,
    }
    if per_txn is not None:
        config["transactional.id"] = f"bench-{uuid.uuid4().hex[:6]}"
    producer = Producer(config)
    failures: list[object] = []
    payload = b"x" * size
    if per_txn is not None:
        producer.init_transactions(30)
    started = time.perf_counter()
    for i in range(count):
        if per_txn is not None and i % per_txn == 0:
            if i:
                producer.commit_transaction(60)
            producer.begin_transaction()
        while True:
            try:
                producer.produce(
                    topic,
                    payload,
                    partition=i % PARTITIONS,
                    on_delivery=lambda err, _m: failures.append(err) if err else None,
                )
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    if per_txn is not None:
        producer.commit_transaction(60)
    assert producer.flush(120) == 0 and not failures, failures[:3]
    return count / (time.perf_counter() - started)


def _consume(bootstrap: str, topic: str, count: int, isolation: str) -> float:
    """Records/s from the first record received (the group join is not counted)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    started = 0.0
    try:
        while seen < count:
            for message in consumer.consume(1000, 1.0):
                if message.error() is None:
                    if not seen:
                        started = time.perf_counter()
                    seen += 1
    finally:
        consumer.close()
    return (count - 1) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--per-txn", type=int, default=1000)
    parser.add_argument(
        "--bootstrap", help="an existing cluster (e.g. kops cluster start) instead of a new broker"
    )
    parser.add_argument("--replication-factor", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        broker = None
        if args.bootstrap is None:
            broker = BrokerProcess(Path(root) / "broker", extra_args=["--log-level", "WARNING"])
            broker.start()
        try:
            bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
            run = uuid.uuid4().hex[:6]
            warm_up, plain_topic, txn_topic = (f"{t}-{run}" for t in ("warm-up", "plain", "txn"))
            for topic in (warm_up, plain_topic, txn_topic):
                admin.create_topic(bootstrap, topic, PARTITIONS, args.replication_factor)
            # The first producer pays for the broker's cold start; it is not measured.
            _produce(bootstrap, warm_up, min(args.records, 20_000), args.size, None)
            plain = _produce(bootstrap, plain_topic, args.records, args.size, None)
            txn = _produce(bootstrap, txn_topic, args.records, args.size, args.per_txn)
            read_plain = _consume(bootstrap, plain_topic, args.records, "read_uncommitted")
            read = _consume(bootstrap, txn_topic, args.records, "read_committed")
            print(
                f"produce {args.records} x {args.size} B, {PARTITIONS} partitions, "
                f"replication factor {args.replication_factor}, acks=all:"
            )
            print(f"  idempotent:                     {plain:>10,.0f} records/s")
            print(
                f"  transactional, {args.per_txn:>5} per commit: {txn:>10,.0f} records/s"
                f"  (ratio {txn / plain:.2f})"
            )
            print("consume, from the first record:")
            print(f"  read_uncommitted, idempotent:   {read_plain:>10,.0f} records/s")
            print(
                f"  read_committed, transactional:  {read:>10,.0f} records/s"
                f"  (ratio {read / read_plain:.2f})"
            )
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
