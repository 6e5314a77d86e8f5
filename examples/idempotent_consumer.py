"""A ledger consumer whose effects happen once per message, however often Kafka redelivers.

    python examples/idempotent_consumer.py --topic payments --group ledger --db ledger.db
    python examples/idempotent_consumer.py ... --mode external --effects-file sent.log
    python examples/idempotent_consumer.py ... --mode external --store redis://127.0.0.1:6379/0

Each record is a payment ``{"account": ..., "amount": ...}``.

``--mode exactly-once`` (default): the payment is written to a ``ledger`` table in the SQLite
file ``--db``, in the same transaction as the helper's done-mark
(:meth:`kops.recipes.idempotent.Idempotent.transactional`). Kill the process at any moment
(even with SIGKILL) and restart it: every payment is in the ledger exactly once.

``--mode external``: the effect goes somewhere the transaction cannot reach (here: a line
appended to ``--effects-file``, standing in for an HTTP call or an email). The helper claims
each message with a lease before the effect and marks it done after: redeliveries are
skipped, nothing is silently lost, and only a crash between the effect and the done-mark
can repeat an effect (at-least-once plus dedup). ``--store redis://...`` keeps the claims in
Redis instead of the SQLite file, for consumers spread over several machines.

Offsets are committed only every ``--commit-every`` records, so a crash makes Kafka
redeliver up to that many records: the helper is what keeps them from applying twice.
``--instance-id`` sets a static group membership, so a restarted process takes its
predecessor's place at once instead of waiting for its session to time out.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from kops.client import ClientSettings, IdleClock
from kops.recipes.idempotent import Idempotent, SQLiteStore


def open_ledger(path: str) -> SQLiteStore:
    """The store; its SQLite file also holds the ledger, so both commit together."""
    store = SQLiteStore(path)
    store.connection().execute(
        "CREATE TABLE IF NOT EXISTS ledger ("
        " topic TEXT, partition INTEGER, offset INTEGER, account TEXT, amount INTEGER)"
    )
    return store


def make_handler(
    once: Idempotent, mode: str, effects_file: str | None, delay: float = 0.0
) -> Callable[[Message], Any]:
    """The handler of ``mode``; ``delay`` seconds of simulated work follow each effect."""
    if mode == "exactly-once":

        @once.transactional
        def apply(msg: Message, db: sqlite3.Connection) -> None:
            payment = json.loads(msg.value())
            # No UNIQUE constraint on purpose: a double apply would show up as a second row.
            db.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?)",
                (msg.topic(), msg.partition(), msg.offset(), payment["account"], payment["amount"]),
            )
            time.sleep(delay)  # a crash here rolls the row back with the transaction

        return apply

    if effects_file is None:
        raise SystemExit("--mode external needs --effects-file")
    out = open(effects_file, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

    @once
    def send(msg: Message) -> None:
        payment = json.loads(msg.value())
        out.write(f"{msg.topic()}/{msg.partition()}/{msg.offset()} {payment['amount']}\n")
        out.flush()
        time.sleep(delay)  # a crash here repeats the effect: it is out of the store's reach

    return send


def commit(consumer: Consumer) -> None:
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing new to commit is fine
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--db", required=True, help="SQLite file: dedup store (and ledger)")
    parser.add_argument("--store", help="redis:// URL for the claims (--mode external only)")
    parser.add_argument("--mode", choices=["exactly-once", "external"], default="exactly-once")
    parser.add_argument("--effects-file", help="where --mode external appends its effects")
    parser.add_argument("--lease", type=float, default=30.0, help="claim lease in seconds")
    parser.add_argument("--commit-every", type=int, default=50)
    parser.add_argument("--instance-id", help="static group membership (group.instance.id)")
    parser.add_argument("--idle-timeout", type=float, help="exit after this long with no records")
    parser.add_argument(
        "--handler-delay", type=float, default=0.0, help="seconds of work per record"
    )
    args = parser.parse_args(argv)

    if args.store and args.mode != "external":
        parser.error("--store needs --mode external: exactly-once needs the SQLite ledger")
    store = args.store or open_ledger(args.db)
    once = Idempotent(store, namespace=args.group, lease=args.lease)
    handle = make_handler(once, args.mode, args.effects_file, args.handler_delay)

    extra = {"session.timeout.ms": 6000}
    if args.instance_id:
        extra["group.instance.id"] = args.instance_id
    consumer = Consumer(ClientSettings(args.bootstrap).consumer_config(args.group, **extra))
    consumer.subscribe([args.topic])
    print("ready", flush=True)
    handled = 0
    idle = IdleClock(args.idle_timeout)  # counts only once the group has assigned partitions
    try:
        while not idle.expired(consumer):
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                print(f"error: {msg.error()}", file=sys.stderr)
                return 1
            idle.touch()
            handle(msg)
            consumer.store_offsets(msg)
            handled += 1
            if handled % args.commit_every == 0:
                commit(consumer)
        commit(consumer)
    finally:
        consumer.close()
        print(json.dumps({"handled": handled, **once.stats.as_dict()}), flush=True)
        once.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
