"""Crash injection: examples/idempotent_consumer.py killed with SIGKILL at random moments.

Offsets are committed only every 25 records, so each kill makes Kafka redeliver up to 25
records; some records are also produced twice with the same kops message id (a retried
forward). At the end:

- exactly-once mode (effects in the store's SQLite transaction): every payment is in the
  ledger exactly once;
- external mode (effects outside the transaction): every payment happened at least once, and
  an effect repeats only when a kill fell between the effect and the done-mark (at most one
  per kill).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

# pytest puts this directory on sys.path (no __init__.py): reuse the redis-server helper.
from test_idempotent_stores import redis_server

from kops import admin
from kops.client import ClientSettings
from kops.recipes.headers import MESSAGE_ID

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "idempotent_consumer.py"
PAYMENTS = 250
COPIES = 40  # re-sent copies of payments 0, 2, 4, ... carrying the same message id
KILLS = 4


def _produce(bootstrap: str, topic: str) -> None:
    producer = Producer(ClientSettings(bootstrap).producer_config())

    def send(n: int) -> None:
        headers = [(MESSAGE_ID, f"pay-{n}".encode())] if n % 2 == 0 else []
        value = json.dumps({"n": n, "account": f"acct-{n % 7}", "amount": n})
        producer.produce(topic, key=f"acct-{n % 7}".encode(), value=value, headers=headers)

    for n in range(PAYMENTS):
        send(n)
    for i in range(COPIES):
        send(2 * i)
    assert producer.flush(30) == 0


def _run_with_kills(args: list[str], seed: int) -> list[str]:
    """Start the consumer KILLS times, SIGKILL it at a random moment, then let it finish."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.4, 1.6))  # not polling: the kill lands at a random moment
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    final = subprocess.run(
        [sys.executable, str(EXAMPLE), *args, "--idle-timeout", "1.5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert final.returncode == 0, final.stderr
    return final.stdout.splitlines()


def _base_args(bootstrap: str, tmp_path: Path, mode: str) -> tuple[list[str], str]:
    topic = f"pay-{uuid.uuid4().hex[:8]}"
    admin.create_topic(bootstrap, topic, 3)
    _produce(bootstrap, topic)
    args = ["--bootstrap", bootstrap, "--topic", topic, "--group", f"ledger-{topic}"]
    args += ["--db", str(tmp_path / "ledger.db"), "--mode", mode, "--lease", "1"]
    args += ["--commit-every", "25", "--instance-id", "ledger-1", "--handler-delay", "0.008"]
    return args, topic


def _n_by_offset(bootstrap: str, topic: str, rows: list[tuple[int, int]]) -> Counter[int]:
    """Payment numbers of (partition, offset) pairs, read back from the topic."""
    from kops.consume import StartAt, consume

    numbers = {
        (r.partition, r.offset): json.loads(r.value)["n"]
        for r in consume(bootstrap, topic, start=StartAt.beginning(), idle_timeout=2)
    }
    return Counter(numbers[row] for row in rows)


def test_exactly_once_when_effects_share_the_sqlite_transaction(
    kafka_broker: str, tmp_path: Path
) -> None:
    args, topic = _base_args(kafka_broker, tmp_path, "exactly-once")
    out = _run_with_kills(args, seed=6)
    stats = json.loads(out[-1])
    db = sqlite3.connect(tmp_path / "ledger.db")
    rows = [(p, o) for p, o in db.execute("SELECT partition, offset FROM ledger")]
    counts = _n_by_offset(kafka_broker, topic, rows)
    assert counts == Counter(range(PAYMENTS)), {n: c for n, c in counts.items() if c != 1}
    # The final run alone saw redeliveries (the last kill's uncommitted records) or copies.
    assert stats["duplicates"] > 0


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_external_effects_at_least_once_with_dedup(
    kafka_broker: str, tmp_path: Path, store: str
) -> None:
    effects = tmp_path / "effects.log"
    args, topic = _base_args(kafka_broker, tmp_path, "external")
    args += ["--effects-file", str(effects)]
    with contextlib.ExitStack() as stack:
        if store == "redis":
            args += ["--store", stack.enter_context(redis_server())]
        _run_with_kills(args, seed=7)
    rows = []
    for line in effects.read_text().splitlines():
        _, p, o = line.split()[0].split("/")
        rows.append((int(p), int(o)))
    counts = _n_by_offset(kafka_broker, topic, rows)
    assert set(counts) == set(range(PAYMENTS))  # nothing silently skipped
    repeated = sum(c - 1 for c in counts.values())
    assert repeated <= KILLS, {n: c for n, c in counts.items() if c > 1}


@pytest.mark.parametrize("mode", ["exactly-once", "external"])
def test_restart_without_crash_applies_nothing_twice(
    kafka_broker: str, tmp_path: Path, mode: str
) -> None:
    args, _ = _base_args(kafka_broker, tmp_path, mode)
    args += ["--effects-file", str(tmp_path / "effects.log"), "--idle-timeout", "1.5"]
    args += ["--handler-delay", "0"]
    first = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    stats = json.loads(first.stdout.splitlines()[-1])
    assert stats["processed"] == PAYMENTS and stats["duplicates"] == COPIES
