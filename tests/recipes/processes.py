"""Recipe workers in child processes, for tests that kill them with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from kops.recipes.delay import DelayTiers
from kops.testing import wait_until


class ChildProcess:
    """``python -m kops ARGS...`` in a child process; its stderr lines are kept."""

    def __init__(self, bootstrap: str, args: Sequence[str]):
        self.command = [sys.executable, "-m", "kops", *args]
        self.env = {**os.environ, "KOPS_BOOTSTRAP": bootstrap}
        self.env.pop("KOPS_DEBUG", None)  # a failing child's one-line error, not a traceback
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

    def alive(self) -> bool:
        """True while it runs; fails the test, with its last log lines, once it died."""
        assert self.process is not None
        assert self.process.poll() is None, self.log()
        return True

    def log(self, lines: int = 30) -> str:
        return "".join(self.lines[-lines:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        """Its exit status, once it ended on its own."""
        assert self.process is not None
        return self.process.wait(timeout)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)


class ForwarderProcess(ChildProcess):
    """``kops delay worker`` in a child process; waits until every tier has its partitions."""

    def __init__(self, bootstrap: str, tiers: DelayTiers, group: str, instance: str, *extra: str):
        super().__init__(
            bootstrap,
            [
                "delay", "worker", "-v",  # -v: assignments
                "--tiers", tiers.describe(), "--template", tiers.template,
                "--group", group, "--instance-id", instance, "--stats-interval", "1s", *extra,
            ],
        )  # fmt: skip
        self.tiers = tiers

    def start(self, timeout: float = 30) -> None:
        super().start()
        want = {f"tier {t}: assigned" for t in self.tiers.describe().split(",")}

        def assigned() -> bool:
            return self.alive() and all(any(w in line for line in self.lines) for w in want)

        wait_until(assigned, timeout, message=lambda: "partitions for every tier:\n" + self.log(20))


def wait_for_progress(
    count: Callable[[], int],
    rng: random.Random,
    log: Callable[[], str],
    *,
    what: str = "progress",
    timeout: float = 30,
) -> None:
    """Until ``count()`` (what a recipe has written so far) has grown by a random few: the
    next kill falls at a random point of a stream that is moving (mid-batch, mid-commit or
    between batches). ``log()`` is in the message when it does not."""
    want = count() + rng.randint(2, 25)
    wait_until(lambda: count() >= want, timeout, message=lambda: f"{what}; log:\n{log()}")


def run_kops(bootstrap: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m kops ARGS...`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "kops", *args],
        env={k: v for k, v in {**os.environ, "KOPS_BOOTSTRAP": bootstrap}.items() if k != "KOPS_DEBUG"},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    """Exit status 1 and exactly one ``error:`` line, naming ``text``, no traceback."""
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr
