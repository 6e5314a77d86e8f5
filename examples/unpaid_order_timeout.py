"""Unpaid-order timeout: an order not paid within N minutes (default 30) is cancelled.

The classic delay-queue job, on plain Kafka topics:

- placing an order writes it to ``orders`` and sends a delayed *check* (key = order id) to
  ``orders.payment-check`` through the delay tiers (:func:`kops.recipes.delay.send_delayed`);
- paying writes to ``payments``;
- when a check falls due, the checker reads ``payments`` up to its current end, and cancels
  the order (a record on ``orders.cancelled``) unless it has been paid. Checks are committed
  after the decision is written, so a crashed checker decides again, never skips one.

Run the demo against ``kops up`` (which runs the delay forwarders)::

    python examples/unpaid_order_timeout.py --timeout 30m
    python examples/unpaid_order_timeout.py --timeout 5s --orders 3 --pay o-2 --forwarders

``--forwarders`` runs the tier forwarders in this process too, for a cluster without
``kops up``. Only the Kafka protocol is used: it works unchanged against a real cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from kops import admin
from kops.cli.common import parse_duration
from kops.client import TopicAlreadyExists
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions

ORDERS, PAYMENTS, CHECKS, CANCELLED = (
    "orders",
    "payments",
    "orders.payment-check",
    "orders.cancelled",
)


class OrderTimeouts:
    def __init__(self, bootstrap: str, timeout: float, tiers: DelayTiers, prefix: str = ""):
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.tiers = tiers
        self.orders, self.payments = prefix + ORDERS, prefix + PAYMENTS
        self.checks, self.cancelled = prefix + CHECKS, prefix + CANCELLED
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def setup(self) -> None:
        for topic in (self.orders, self.payments, self.checks, self.cancelled):
            with contextlib.suppress(TopicAlreadyExists):
                admin.create_topic(self.bootstrap, topic, 1)
        ensure_tier_topics(self.bootstrap, self.tiers)

    def place(self, order_id: str, amount: float) -> None:
        order = json.dumps({"order_id": order_id, "amount": amount}).encode()
        self.producer.produce(self.orders, order, key=order_id.encode())
        send_delayed(
            self.producer, self.checks, order, key=order_id.encode(), delay=self.timeout,
            tiers=self.tiers,
        )  # fmt: skip
        self.producer.flush(10)

    def pay(self, order_id: str) -> None:
        self.producer.produce(self.payments, order_id.encode(), key=order_id.encode())
        self.producer.flush(10)

    def run_checker(self, stop: threading.Event, decided: list[tuple[str, str]]) -> None:
        """Decide every due check; appends (order id, "paid" | "cancelled") to ``decided``."""
        checks = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.checks}.checker",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        payments = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uuid.uuid4().hex})
        payments.assign([TopicPartition(self.payments, 0, 0)])
        paid: set[str] = set()
        read_to = [0]  # next payments offset to read
        checks.subscribe([self.checks])
        try:
            while not stop.is_set():
                m = checks.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                order_id = m.key().decode()
                self._catch_up(payments, paid, read_to)  # every payment made before now is counted
                if order_id in paid:
                    decided.append((order_id, "paid"))
                else:
                    note = {"order_id": order_id, "reason": f"not paid within {self.timeout:g}s"}
                    self.producer.produce(self.cancelled, json.dumps(note).encode(), key=m.key())
                    self.producer.flush(10)
                    decided.append((order_id, "cancelled"))
                checks.commit(m, asynchronous=False)
        finally:
            checks.close()
            payments.close()

    def _catch_up(self, payments: Consumer, paid: set[str], read_to: list[int]) -> None:
        _low, end = payments.get_watermark_offsets(TopicPartition(self.payments, 0), timeout=10)
        while read_to[0] < end:
            m = payments.poll(1.0)
            if m is None:
                continue
            if m.error() is not None:
                raise KafkaException(m.error())
            paid.add(m.key().decode())
            read_to[0] = m.offset() + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--timeout", default="30m", help="cancel orders not paid within this (30m)")
    p.add_argument("--orders", type=int, default=3, help="orders to place (o-1, o-2, ...)")
    p.add_argument("--pay", action="append", default=[], help="order ids to pay (repeatable)")
    p.add_argument("--tiers", default=None, help="delay tiers, e.g. 1s,5s (default: kops's)")
    p.add_argument("--prefix", default="", help="prefix for the example's topic names")
    p.add_argument("--forwarders", action="store_true", help="run the tier forwarders here too")
    args = p.parse_args(argv)

    timeout = parse_duration(args.timeout)
    tiers = DelayTiers.parse(args.tiers)
    app = OrderTimeouts(args.bootstrap, timeout, tiers, args.prefix)
    app.setup()
    stop = threading.Event()
    threads = []
    if args.forwarders:
        fw = DelayForwarders(args.bootstrap, ForwarderOptions(tiers=tiers, stats_interval=5))
        threads.append(threading.Thread(target=fw.run, args=(stop,)))
        threads[-1].start()
        fw.wait_assigned(60)
    decided: list[tuple[str, str]] = []
    threads.append(threading.Thread(target=app.run_checker, args=(stop, decided)))
    threads[-1].start()

    ids = [f"o-{i}" for i in range(1, args.orders + 1)]
    for i, order_id in enumerate(ids, start=1):
        app.place(order_id, 10.0 * i)
        print(f"placed {order_id}; must be paid within {args.timeout}", flush=True)
    for order_id in args.pay:
        app.pay(order_id)
        print(f"paid {order_id}", flush=True)
    try:
        deadline = time.monotonic() + timeout + 60
        while len(decided) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    for order_id, outcome in decided:
        print(f"order {order_id}: {outcome}", flush=True)
    return 0 if len(decided) == len(ids) else 1


if __name__ == "__main__":
    sys.exit(main())
