"""An order consumer with retries and a dead-letter topic (kops.recipes.retry).

    python examples/retry_dlq_consumer.py --seed 20 --run-forwarders

What happens to each order:

- valid orders are "charged" (printed);
- orders whose payment gateway fails a few times (``"gateway_failures": n``) are retried:
  in process first, then through the retry tiers, and succeed once the gateway recovers;
- orders with a negative amount raise :class:`InvalidOrder` (a ``FatalError``) and go
  straight to ``orders.dlq``; so do values that are not JSON (``DeserializationError``);
- orders whose gateway never recovers go to ``orders.dlq`` after the last tier.

Then look at the dead letters: ``kops dlq inspect orders.dlq``, and send them back with
``kops dlq replay orders.dlq``. ``handle`` is also what ``recipes/orders-retry-dlq.toml``
runs in the worker.

``--run-forwarders`` runs the delay-tier forwarders in this process; without it, run them
elsewhere (``kops delay worker`` or ``kops up``).

``--exactly-once`` puts each batch's retries, dead letters and offsets in one transaction
(read them with ``isolation.level=read_committed``); ``--instance-id`` makes its
transactional id stable, so a restart after a crash takes over at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from typing import Any

from confluent_kafka import Message, Producer

from kops.admin import create_topic
from kops.client import ClientSettings, TopicAlreadyExists
from kops.errors import KopsError
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers
from kops.recipes.retry import (
    DeserializationError,
    FatalError,
    Outcome,
    RetryPolicy,
    ensure_retry_topics,
    run_retrying_consumer,
)


class InvalidOrder(FatalError):
    """The order itself is wrong: no retry can fix it."""


class PaymentGatewayDown(Exception):
    """A transient failure: worth retrying."""


def handle(msg: Message) -> None:
    """Charge one order. Raises to ask for a retry or a dead letter."""
    try:
        order = json.loads(msg.value())
    except (TypeError, ValueError) as exc:
        raise DeserializationError(f"order is not JSON: {msg.value()!r:.60}") from exc
    if order.get("amount", 0) < 0:
        raise InvalidOrder(f"order {order.get('id')}: negative amount {order['amount']}")
    # The simulated gateway fails the first n deliveries of this order: in-process calls
    # fail together, so recovery happens on a later tier (kops.retry.attempt counts them).
    delivery = int(h.get(msg.headers(), h.RETRY_ATTEMPT) or 0)
    if delivery < order.get("gateway_failures", 0):
        raise PaymentGatewayDown(f"gateway timeout for order {order['id']} (delivery {delivery})")
    print(f"charged order {order['id']}: {order['amount']}", flush=True)


#: Sample orders cycle through these kinds: in every 10, 5 good, 2 flaky (charged on the
#: first retry tier), and 3 dead letters (negative amount, not JSON, gateway never back).
KINDS = ["ok", "flaky", "ok", "negative", "ok", "garbage", "ok", "flaky", "ok", "dead"]


def seed_orders(settings: ClientSettings, topic: str, count: int) -> None:
    """Produce ``count`` sample orders (see :data:`KINDS`)."""
    producer = Producer(settings.producer_config())
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        order: dict[str, Any] = {"id": i, "amount": 10 + 7 * i}
        if kind == "flaky":
            order["gateway_failures"] = 1
        elif kind == "negative":
            order["amount"] = -order["amount"]
        elif kind == "dead":
            order["gateway_failures"] = 99
        value = b"\x00garbage" if kind == "garbage" else json.dumps(order).encode()
        producer.produce(topic, value, key=str(i).encode())
    producer.flush(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default=os.environ.get("KOPS_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--group", default="orders-billing")
    ap.add_argument("--ladder", default="1s,10s,1m,10m", help="retry tier delays")
    ap.add_argument("--tiers", default=None, help="delay tiers (default: kops's 18 tiers)")
    ap.add_argument("--tier-template", default="kops.delay.{tier}")
    ap.add_argument("--seed", type=int, default=0, help="produce N sample orders first")
    ap.add_argument("--seed-only", action="store_true", help="produce the sample orders, exit")
    ap.add_argument("--run-forwarders", action="store_true", help="run the delay forwarders here")
    ap.add_argument("--expect", type=int, default=None, help="stop after N records finished")
    ap.add_argument("--idle-timeout", type=float, default=None, help="stop after N idle seconds")
    ap.add_argument(
        "--exactly-once", action="store_true", help="each batch's outputs in one transaction"
    )
    ap.add_argument("--instance-id", default=None, help="stable name of this consumer")
    args = ap.parse_args(argv)

    settings = ClientSettings(args.bootstrap)
    tiers = DelayTiers.parse(args.tiers, template=args.tier_template)
    policy = RetryPolicy.from_dict({"ladder": args.ladder, "attempts": 2, "backoff": "50ms"})
    if args.seed:
        with contextlib.suppress(TopicAlreadyExists):
            create_topic(settings, args.topic, partitions=3)
        ensure_retry_topics(settings, [args.topic], policy=policy, tiers=tiers)
        seed_orders(settings, args.topic, args.seed)
        if args.seed_only:
            return 0

    stop = threading.Event()
    forwarders = None
    if args.run_forwarders:
        from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions

        forwarders = threading.Thread(
            target=DelayForwarders(settings, ForwarderOptions(tiers=tiers, stats_interval=0)).run,
            args=(stop,),
            daemon=True,
        )
        forwarders.start()

    finished = 0

    def on_outcome(msg: Message, outcome: Outcome) -> None:
        nonlocal finished
        if outcome in (Outcome.HANDLED, Outcome.DEAD_LETTERED):
            finished += 1
        if outcome is not Outcome.HANDLED:
            print(f"order {msg.key()!r}: {outcome.value}", flush=True)
        if args.expect is not None and finished >= args.expect:
            stop.set()

    try:
        stats = run_retrying_consumer(
            settings, [args.topic], handle, group=args.group, policy=policy, tiers=tiers,
            stop=stop, idle_timeout=args.idle_timeout, on_outcome=on_outcome,
            exactly_once=args.exactly_once, instance_id=args.instance_id,
        )  # fmt: skip
    except KeyboardInterrupt:
        return 130
    except KopsError as exc:  # e.g. a cluster that refuses transactions: one line, exit 1
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        if forwarders is not None:
            forwarders.join(30)
    print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
