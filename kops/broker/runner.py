"""Run a Broker in the foreground (CLI) or in a background thread (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kops.broker.broker import Broker
from kops.errors import KopsError

log = logging.getLogger("kops.broker")


def serve_forever(
    data_dir: Path,
    host: str,
    port: int,
    *,
    advertise: tuple[str, int] | None = None,
    config: Mapping[str, str] | None = None,
    metrics: tuple[str, int] | None = None,
    on_listening: Callable[[Broker], None] | None = None,
) -> int:
    """Run until SIGINT or SIGTERM, then shut down cleanly; return that signal's number
    (the CLI exits 128 + it: 130 after Ctrl-C, 143 after SIGTERM, like every long-running
    ``kops`` command)."""
    received: list[int] = []

    async def main() -> None:
        broker = Broker(
            data_dir, host=host, port=port, advertise=advertise, config=config, metrics=metrics
        )
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if not received:
                received.append(signum)
            stop.set()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        if on_listening is not None:
            on_listening(broker)
        await stop.wait()
        log.info("%s: shutting down", signal.Signals(received[0]).name)
        await broker.stop()

    asyncio.run(main())
    return received[0]


#: The signals that stop a foreground broker cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Exit statuses of a clean stop of ``kops broker start``: 128 + the signal.
CLEAN_STOP_CODES = frozenset(128 + s for s in STOP_SIGNALS)


class BrokerThread:
    """A broker on its own event loop in a daemon thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Mapping[str, str] | None = None,
        metrics: tuple[str, int] | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self.broker = Broker(data_dir, host=host, port=port, config=config, metrics=metrics)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kops-broker", daemon=True
        )

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self._loop).result(30)
        host, port = self.broker.advertised
        return f"{host}:{port}"

    def call(self, fn: Callable[[], object], timeout: float = 30) -> object:
        """Run fn on the broker's loop (the broker is not thread-safe)."""

        async def run() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.broker.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


class BrokerStartError(KopsError, RuntimeError):
    """The broker child exited or stayed silent instead of announcing its address."""


class BrokerProcess:
    """`python -m kops broker start` as a child process.

    Used by `kops up`, by tests that kill the broker (SIGKILL) and restart it,
    and by benchmarks. A restart reuses the first start's port, as clients
    expect of a broker coming back. With ``metrics="HOST:PORT"`` (port 0: a free
    one) it serves Prometheus metrics; ``metrics_url`` is then where.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        stderr: int | None = subprocess.DEVNULL,
        preexec_fn: Callable[[], None] | None = None,
        metrics: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.metrics = metrics
        self.metrics_url: str | None = None
        self.host = host
        self.port = port
        self.config = dict(config or {})
        self.extra_args = list(extra_args)
        self.stderr = stderr
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[str] | None = None
        self.bootstrap = ""

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "kops",
            "broker",
            "start",
            "--listen",
            f"{self.host}:{self.port}",
        ]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        for key, value in self.config.items():
            command += ["--config", f"{key}={value}"]
        if self.metrics is not None:
            command += ["--metrics", self.metrics]
        return command + self.extra_args

    def start(self, timeout: float = 60.0) -> str:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        match = re.search(r"listening on (\S+):(\d+)", self._readline(timeout))
        if match and self.metrics is not None:
            # Printed right after the listening line.
            served = re.search(
                r"metrics on (http://\S+:(\d+)/metrics)",
                self._readline(max(deadline - time.monotonic(), 1.0)),
            )
            if served is None:
                match = None
            else:
                self.metrics_url = served.group(1)
                # A restart serves on the same port, as it listens on the same one.
                self.metrics = f"{self.metrics.rpartition(':')[0]}:{served.group(2)}"
        if not match:
            self.kill()
            code = self.process.returncode
            raise BrokerStartError(
                "the bundled broker did not start" + (f" (exit code {code})" if code else "")
            )
        self.port = int(match.group(2))
        self.bootstrap = f"{match.group(1)}:{match.group(2)}"
        return self.bootstrap

    def _readline(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        lines: list[str] = []
        # readline() has no timeout of its own: a broker that hangs at start
        # must not hang its caller.
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return lines[0] if lines else ""

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, so the next start recovers the log."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait: a clean shutdown. Returns the exit status: 143 (128 +
        SIGTERM, in :data:`CLEAN_STOP_CODES`) after a clean stop, -9 when the broker had to
        be killed after ``timeout``, whatever it exited with if it had already exited, None
        if it never started."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode
