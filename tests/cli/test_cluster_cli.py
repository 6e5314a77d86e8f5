"""``kops cluster start`` / ``status``: three real broker processes, one quorum."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from click.testing import CliRunner

from kops.cli.main import main
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import free_ports, wait_until

pytestmark = requires_bundled_broker


def _status(bootstrap: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["cluster", "status", "--bootstrap", bootstrap, *args])
    return result.exit_code, result.stdout, result.stderr


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_cluster_start_status_and_sigterm(tmp_path: Path) -> None:
    base = free_ports(3)
    ports = [base, base + 1, base + 2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "cluster", "start", "--nodes", "3",
         "--base-port", str(base), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"},
    )  # fmt: skip
    out: list[str] = []
    err: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        wait_until(
            lambda: any(line.startswith("bootstrap:") for line in out) or proc.poll() is not None,
            60,
            message=lambda: "".join(err),
        )
        assert proc.poll() is None, "".join(err)
        assert out[:3] == [f"kops broker {n} listening on 127.0.0.1:{p}\n"
                           for n, p in zip((1, 2, 3), ports, strict=True)]  # fmt: skip
        bootstrap = ",".join(f"127.0.0.1:{p}" for p in ports)
        assert out[3] == f"bootstrap: {bootstrap}\n"

        def caught_up() -> dict[str, object] | None:
            code, stdout, _ = _status(bootstrap, "--json")
            if code != 0:
                return None
            view = json.loads(stdout)
            lags = [v["lag"] for v in view["voters"]]
            fenced = [b["fenced"] for b in view["brokers"]]
            return view if lags == [0, 0, 0] and fenced == [False] * 3 else None

        view = wait_until(caught_up, 30, message="all three voters caught up, brokers active")
        assert isinstance(view, dict)
        assert view["controller"] in (1, 2, 3) and view["epoch"] >= 1
        assert [v["node"] for v in view["voters"]] == [1, 2, 3]  # type: ignore[attr-defined]
        roles = sorted(v["role"] for v in view["voters"])  # type: ignore[attr-defined]
        assert roles == ["follower", "follower", "leader"]

        assert [b["address"] for b in view["brokers"]] == bootstrap.split(",")  # type: ignore[attr-defined]
        code, stdout, _ = _status(bootstrap)
        assert code == 0 and f"controller: node {view['controller']}" in stdout
        assert stdout.count("active") == 3

        follower = next(p for n, p in enumerate(ports, 1) if n != view["controller"])
        code, _, stderr = _status(f"127.0.0.1:{follower}")
        assert code == 1
        assert stderr.count("\n") == 1 and "pass every broker in --bootstrap" in stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        assert "Traceback" not in "".join(err)
        assert all(_refuses(p) for p in ports), "a broker outlived kops cluster start"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_of_a_single_broker_is_a_one_line_error(kafka_broker: str) -> None:
    code, _, stderr = _status(kafka_broker)
    assert code == 1
    assert stderr.count("\n") == 1 and "runs no controller quorum" in stderr
