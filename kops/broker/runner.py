"""Run a Broker in the foreground (CLI) or in a background thread (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from kops.broker.broker import Broker

log = logging.getLogger("kops.broker")


def serve_forever(
    data_dir: Path,
    host: str,
    port: int,
    *,
    advertise: tuple[str, int] | None = None,
    config: Mapping[str, str] | None = None,
    on_listening: Callable[[Broker], None] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""

    async def main() -> None:
        broker = Broker(data_dir, host=host, port=port, advertise=advertise, config=config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if on_listening is not None:
            on_listening(broker)
        await stop.wait()
        log.info("shutting down")
        await broker.stop()

    asyncio.run(main())


class BrokerThread:
    """A broker on its own event loop in a daemon thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self.broker = Broker(data_dir, host=host, port=port, config=config)
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
