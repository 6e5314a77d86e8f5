"""Recipe workers in child processes, for tests that kill them with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from kops.recipes.delay import DelayTiers
from kops.testing import wait_until


def assert_one_error_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    """The command failed as kops commands do: exit 1, one ``error:`` line saying ``text``."""
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr


class KopsProcess:
    """``python -m kops ARGS`` in a child process against ``bootstrap``; its stderr lines are
    collected (``lines``) for assertions and failure messages."""

    def __init__(self, bootstrap: str, *args: str):
        self.command = [sys.executable, "-m", "kops", *args]
        self.env = {**os.environ, "KOPS_BOOTSTRAP": bootstrap}
        self.env.pop("KOPS_DEBUG", None)
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 30) -> None:
        self.lines = []
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run to the end (not killable): its exit status, stdout and stderr."""
        return subprocess.run(
            self.command, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)


class ForwarderProcess(KopsProcess):
    """``kops delay worker`` in a child process; waits until every tier has its partitions."""

    def __init__(self, bootstrap: str, tiers: DelayTiers, group: str, instance: str, *extra: str):
        super().__init__(
            bootstrap,
            "delay", "worker", "-v",  # -v: assignments
            "--tiers", tiers.describe(), "--template", tiers.template,
            "--group", group, "--instance-id", instance, "--stats-interval", "1s", *extra,
        )  # fmt: skip
        self.tiers = tiers

    def start(self, timeout: float = 30) -> None:
        super().start()
        want = {f"tier {t}: assigned" for t in self.tiers.describe().split(",")}
        process = self.process
        assert process is not None

        def assigned() -> bool:
            assert process.poll() is None, self.tail(20)
            return all(any(w in line for line in self.lines) for w in want)

        wait_until(
            assigned, timeout, message=lambda: "partitions for every tier:\n" + self.tail(20)
        )
