"""Recipe workers in child processes, for tests that kill them with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from kops.recipes.delay import DelayTiers
from kops.testing import wait_until


class ForwarderProcess:
    """``kops delay worker`` in a child process; waits until every tier has its partitions."""

    def __init__(self, bootstrap: str, tiers: DelayTiers, group: str, instance: str, *extra: str):
        self.command = [
            sys.executable, "-m", "kops", "delay", "worker", "-v",  # -v: assignments
            "--tiers", tiers.describe(), "--template", tiers.template,
            "--group", group, "--instance-id", instance, "--stats-interval", "1s", *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "KOPS_BOOTSTRAP": bootstrap}
        self.tiers = tiers
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 30) -> None:
        self.lines = []
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        want = {f"tier {t}: assigned" for t in self.tiers.describe().split(",")}
        process = self.process

        def assigned() -> bool:
            assert process.poll() is None, "".join(self.lines[-20:])
            return all(any(w in line for line in self.lines) for w in want)

        wait_until(
            assigned,
            timeout,
            message=lambda: "partitions for every tier:\n" + "".join(self.lines[-20:]),
        )

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)
