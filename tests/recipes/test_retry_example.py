"""examples/retry_dlq_consumer.py runs end to end against the bundled broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from kops.recipes.dlq import read_dead_letters

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retry_dlq_consumer.py"


def test_example_consumer(kafka_broker: str) -> None:
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    n = 10
    proc = subprocess.run(
        [
            sys.executable, str(EXAMPLE), "--bootstrap", kafka_broker, "--topic", topic,
            "--group", f"billing-{topic}", "--ladder", "1s", "--tiers", "1s",
            "--tier-template", f"{topic}.delay.{{tier}}", "--seed", str(n), "--run-forwarders",
            "--expect", str(n), "--idle-timeout", "30",
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    dead = list(read_dead_letters(kafka_broker, f"{topic}.dlq"))
    # Count check: every order is charged or dead-lettered.
    assert stats["handled"] + len(dead) == n
    assert stats["dead_lettered"] == len(dead) == 3
    assert stats["by_attempt"] == {"1": 3}  # 2 flaky orders and the hopeless one
    assert proc.stdout.count("charged order") == stats["handled"] == 7
    reasons = {dl.exception_class.rsplit(".", 1)[-1]: dl.reason for dl in dead}
    assert reasons == {
        "InvalidOrder": "fatal",
        "DeserializationError": "fatal",
        "PaymentGatewayDown": "retries-exhausted",
    }
