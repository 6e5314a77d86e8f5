"""Commands started against an address where nothing answers: an error, never silence.

Long-running commands (``kops delay worker``, ``kops worker run``) say so on stderr within
about 10 s and keep retrying visibly; one-shot commands (``kops delay send``, ``kops
produce``, and ``kops consume``, which cannot start reading) exit 1 with one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kops.testing import wait_until


@pytest.fixture
def dead_address() -> str:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def _env(bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"}
    env["KOPS_BOOTSTRAP"] = bootstrap
    return env


class LongRunning:
    def __init__(self, args: list[str], bootstrap: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kops", *args],
            env=_env(bootstrap),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def complaints(self) -> list[str]:
        return [line for line in self.lines if "cannot reach Kafka" in line]

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.mark.parametrize("kind", ["delay worker", "worker run"])
def test_long_running_commands_say_so_and_keep_retrying(
    kind: str, dead_address: str, tmp_path: Path
) -> None:
    if kind == "delay worker":
        args = ["delay", "worker", "--tiers", "1s,5s"]
    else:
        recipe = tmp_path / "delay.toml"
        recipe.write_text('[[job]]\nkind = "delay-forwarders"\ntiers = ["1s", "5s"]\n')
        args = ["worker", "run", str(recipe)]
    cmd = LongRunning(args, dead_address)
    try:
        started = time.monotonic()
        wait_until(cmd.complaints, 10, message=lambda: "a complaint:\n" + "".join(cmd.lines))
        assert time.monotonic() - started < 10
        assert dead_address in cmd.complaints()[0]
        # Still running, and still saying so: retries are visible.
        wait_until(lambda: len(cmd.complaints()) >= 3, 15, message="repeated complaints")
        assert cmd.proc.poll() is None, "".join(cmd.lines)
    finally:
        cmd.stop()  # the exit code on SIGTERM is the graceful-stop helper's business
    assert "stopped" in "".join(cmd.lines[-5:]), "".join(cmd.lines[-10:])


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["delay", "send", "orders", "--in", "1m"], "x\n"),
        (["produce", "orders"], "x\n"),
        (["consume", "orders"], None),
    ],
    ids=["delay send", "produce", "consume"],
)
def test_one_shot_commands_exit_1_with_one_line(
    args: list[str], stdin: str | None, dead_address: str
) -> None:
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "kops", *args],
        env=_env(dead_address),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 12
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: cannot reach Kafka at " + dead_address), lines[0]
