"""examples/engine_probe.py: the Kafka answers the recipes rely on, all as Kafka gives them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "examples" / "engine_probe.py"


def test_every_check_agrees_with_kafka(kafka_broker: str) -> None:
    done = subprocess.run(
        [sys.executable, str(PROBE), "--bootstrap", kafka_broker, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)
    assert len(checks) == 5
    assert [c["name"] for c in checks if not c["ok"]] == []
    assert all(c["got"] == c["expected"] for c in checks)


def test_unreachable_engine_is_one_line_and_exit_1() -> None:
    done = subprocess.run(
        [sys.executable, str(PROBE), "--bootstrap", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
