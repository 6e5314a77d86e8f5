"""Test helpers: a real kops broker on a free loopback port.

    from kops.testing import run_broker

    with run_broker() as bootstrap:
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})

Like Spring's @EmbeddedKafka, but a real Kafka-protocol broker writing real
segment files. `kafka_broker` is the same thing as a pytest fixture (the kops
pytest plugin registers it).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from kops.broker.runner import BrokerThread

# Fast defaults for tests: no initial rebalance delay, quick retention checks.
TEST_CONFIG = {
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "log.retention.check.interval.ms": "1000",
}


@contextlib.contextmanager
def run_broker(
    data_dir: str | Path | None = None,
    *,
    config: Mapping[str, str] | None = None,
    port: int = 0,
) -> Iterator[str]:
    """Start a broker in a background thread; yield its bootstrap address."""
    merged = {**TEST_CONFIG, **(config or {})}
    with _data_dir(data_dir) as directory:
        runner = BrokerThread(Path(directory), port=port, config=merged)
        bootstrap = runner.start()
        try:
            yield bootstrap
        finally:
            runner.stop()


class BrokerProcess:
    """A broker in a child process, for tests that kill it (SIGKILL) and restart it."""

    def __init__(
        self, data_dir: str | Path, *, config: Mapping[str, str] | None = None, port: int = 0
    ):
        self.data_dir = Path(data_dir)
        self.config = {**TEST_CONFIG, **(config or {})}
        self.port = port
        self.process: subprocess.Popen | None = None
        self.bootstrap = ""

    def start(self, timeout: float = 30) -> str:
        command = [
            sys.executable,
            "-m",
            "kops",
            "broker",
            "start",
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        command += ["--data-dir", str(self.data_dir)]
        for key, value in self.config.items():
            command += ["--config", f"{key}={value}"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=os.environ.copy(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"broker did not start: {line!r}")
        self.port = int(match.group(2))  # restarts reuse the port, as clients expect
        self.bootstrap = f"{match.group(1)}:{match.group(2)}"
        return self.bootstrap

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def _data_dir(data_dir: str | Path | None) -> Iterator[str]:
    if data_dir is not None:
        yield str(data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="kops-broker-") as directory:
        yield directory
