"""examples/unpaid_order_timeout.py with a short timeout: unpaid orders are cancelled."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "unpaid_order_timeout.py"


def test_unpaid_orders_are_cancelled_paid_ones_kept(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    res = subprocess.run(
        [
            sys.executable, str(EXAMPLE), "--bootstrap", kafka_broker, "--timeout", "2s",
            "--orders", "3", "--pay", "o-2", "--tiers", "1s,2s", "--prefix", f"x{tag}.",
            "--forwarders",
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    outcomes = dict(
        line.removeprefix("order ").split(": ")
        for line in res.stdout.splitlines()
        if line.startswith("order ")
    )
    assert outcomes == {"o-1": "cancelled", "o-2": "paid", "o-3": "cancelled"}
