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
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from kops.broker.runner import BrokerProcess as _BrokerProcess
from kops.broker.runner import BrokerThread
from kops.errors import KopsError

# Fast defaults for tests: no initial rebalance delay, quick retention checks.
TEST_CONFIG = {
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "log.retention.check.interval.ms": "1000",
    "log.cleaner.backoff.ms": "1000",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now (another process may take it before you bind)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports free on `host` right now (for --base-port)."""
    for _ in range(100):
        base = free_port(host)
        if base + count > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    s = held.enter_context(socket.socket())
                    s.bind((host, port))
            except OSError:
                continue
            return base
    raise OSError(f"no {count} consecutive free ports on {host}")


class FaultProxy:
    """A TCP proxy in front of a broker that a test can break, for network faults.

    ``blackhole()`` stops forwarding in both directions: connections stay open
    and bytes wait, as behind a dead link, so the peers only notice by their
    timeouts. ``cut()`` resets every connection and refuses new ones, as a dead
    host's kernel would. ``heal()`` forwards again (held bytes are delivered
    late, which is also a fault: a stale request arriving after the world moved
    on). ``close()`` stops it. Threads, not asyncio, so it works beside any loop.
    """

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._server = socket.create_server((host, port))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._state = "open"
        self._changed = threading.Condition()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="kops-fault-proxy", daemon=True).start()

    @property
    def port(self) -> int:
        return self.address[1]

    def blackhole(self) -> None:
        self._set("blackhole")

    def cut(self) -> None:
        self._set("cut")
        self._close_connections()

    def heal(self) -> None:
        self._set("open")

    def close(self) -> None:
        self._closed = True
        self._set("cut")
        self._server.close()
        self._close_connections()

    def _set(self, state: str) -> None:
        with self._changed:
            self._state = state
            self._changed.notify_all()

    def _close_connections(self) -> None:
        with self._changed:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._state == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._changed:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._changed:
                    while self._state == "blackhole":
                        self._changed.wait()
                    if self._state == "cut":
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Each pump closes the socket it reads; the shutdowns end the other pump.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._changed:
                self._sockets.discard(src)
            src.close()


class WaitTimeout(KopsError, AssertionError):
    """A condition waited on did not come true in time."""


def wait_until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> object:
    """Poll `condition` until it returns something truthy; return that value.

    Raises WaitTimeout (an AssertionError, so pytest shows it as a failed
    check) naming what was awaited. The poll interval grows from `interval`
    to at most 0.25 s so a long wait costs little CPU and a short one is quick.
    """
    for pause, value in _polls(condition, timeout, interval, message):
        if value:
            return value
        time.sleep(pause)
    raise AssertionError("unreachable: _polls ends by returning or raising")


async def async_wait_until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> object:
    """`wait_until` for asyncio code: polls without blocking the event loop."""
    import asyncio

    for pause, value in _polls(condition, timeout, interval, message):
        if value:
            return value
        await asyncio.sleep(pause)
    raise AssertionError("unreachable: _polls ends by returning or raising")


def _polls(
    condition: Callable[[], object],
    timeout: float,
    interval: float,
    message: str | Callable[[], str] | None,
) -> Iterator[tuple[float, object]]:
    """The shared polling schedule: yields (pause before the next check, the
    condition's value); a truthy value ends the wait. Raises WaitTimeout when time is up."""
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        value = condition()
        if value:
            yield 0.0, value
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            what = text or getattr(condition, "__name__", "condition")
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        yield min(pause, remaining), value
        pause = min(pause * 1.5, 0.25)


class BrokerAddress(str):
    """A bootstrap address (a plain ``str`` to every caller) that also says where the
    broker serves its Prometheus metrics: ``metrics_url``, None unless asked for."""

    metrics_url: str | None = None


@contextlib.contextmanager
def run_broker(
    data_dir: str | Path | None = None,
    *,
    config: Mapping[str, str] | None = None,
    port: int = 0,
    metrics: tuple[str, int] | None = None,
) -> Iterator[BrokerAddress]:
    """Start a broker in a background thread; yield its bootstrap address.

    ``metrics=("127.0.0.1", 0)`` serves its metrics too, on a free port; the address
    yielded has the URL as ``metrics_url``."""
    merged = {**TEST_CONFIG, **(config or {})}
    with _data_dir(data_dir) as directory:
        runner = BrokerThread(Path(directory), port=port, config=merged, metrics=metrics)
        bootstrap = BrokerAddress(runner.start())
        bootstrap.metrics_url = runner.broker.metrics.url
        try:
            yield bootstrap
        finally:
            runner.stop()


class BrokerProcess(_BrokerProcess):
    """A broker in a child process, for tests that kill it (SIGKILL) and restart it."""

    def __init__(
        self, data_dir: str | Path, *, config: Mapping[str, str] | None = None, port: int = 0
    ):
        super().__init__(data_dir, port=port, config={**TEST_CONFIG, **(config or {})})


@contextlib.contextmanager
def _data_dir(data_dir: str | Path | None) -> Iterator[str]:
    if data_dir is not None:
        yield str(data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="kops-broker-") as directory:
        yield directory
