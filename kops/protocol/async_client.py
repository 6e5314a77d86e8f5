"""An asyncio Kafka-protocol client for one broker: typed kio requests, pipelined.

    async with AsyncBrokerClient("127.0.0.1", 9092) as client:
        versions = await client.send(ApiVersionsRequest(...))
        fetch = await client.send(FetchRequest(replica_id=1, ...), expect=FetchResponse)

Built for inter-broker traffic (replica fetchers, the Raft controller):

- One TCP connection; any number of requests in flight on it, matched to
  their responses by correlation id (kops.protocol.framing, shared with the
  blocking client). Requests are written as they are sent (pipelined).
- No task per request and no reader task: the connection is an
  `asyncio.BufferedProtocol` whose callbacks parse frames and resolve each
  request's future. Response bytes are received straight into the frame
  buffer (a large Fetch response gets a buffer of its own size) and kio
  decodes from that buffer, so record bytes are copied once, into the
  response entity.
- A per-request timeout (`RequestTimeoutError`); a late response is
  recognised by its correlation id and dropped, the connection is kept.
- When the connection drops, requests in flight fail with
  `ConnectionLostError`; the next request reconnects, retrying with
  exponential backoff (tenacity) for at most `connect_timeout` seconds and
  within its own timeout, then fails with `BrokerConnectionError`. Both are
  `retriable`.
- `close()` fails whatever is in flight with `ClientClosedError` and closes
  the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any, TypeVar, overload

from kio.static.protocol import RequestPayload
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from kops.protocol.errors import (
    BrokerConnectionError,
    ClientClosedError,
    ConnectionLostError,
    ProtocolError,
    RequestError,
    RequestTimeoutError,
)
from kops.protocol.framing import DEFAULT_MAX_FRAME_BYTES, Correlator, FrameReader
from kops.protocol.messages import response_type

__all__ = [
    "AsyncBrokerClient",
    "BrokerConnectionError",
    "ClientClosedError",
    "ConnectionLostError",
    "ProtocolError",
    "RequestError",
    "RequestTimeoutError",
]

log = logging.getLogger("kops.protocol.async_client")

R = TypeVar("R")

_PRODUCE_KEY = 0


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: frames in, futures resolved. Lives as long as its socket."""

    def __init__(self, address: str, client_id: str | None, max_frame_bytes: int) -> None:
        self.address = address
        self.correlator: Correlator[asyncio.Future[Any]] = Correlator(client_id)
        self._reader = FrameReader(max_frame_bytes=max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._close_reason: RequestError | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._reader.advance(nbytes)
            for frame in frames:
                entry = self.correlator.take(frame)
                waiter = entry.slot
                if waiter is None or waiter.done():
                    continue  # timed out or cancelled: drop the late response undecoded
                try:
                    body = entry.decode(frame)
                except ProtocolError as exc:
                    waiter.set_exception(exc)
                else:
                    waiter.set_result(body)
        except ProtocolError as exc:
            log.warning("closing connection to %s: %s", self.address, exc)
            self.abort(ConnectionLostError(f"connection to {self.address} closed: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        reason = self._close_reason
        for waiter in self.correlator.drain():
            if waiter.done():
                continue
            if reason is not None:
                error: RequestError = type(reason)(str(reason))
            else:
                detail = f": {exc}" if exc is not None else " (closed by the broker)"
                error = ConnectionLostError(f"connection to {self.address} lost{detail}")
            waiter.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)

    # ---- used by the client -------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing() or self.lost.done()

    async def write(self, frame: bytes) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if self.closed:  # dropped while waiting to write: the request was not sent
            raise BrokerConnectionError(f"connection to {self.address} lost")
        assert self._transport is not None
        self._transport.write(frame)

    def close(self, reason: RequestError) -> None:
        self._close_reason = reason
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: RequestError) -> None:
        self._close_reason = reason
        if self._transport is not None:
            self._transport.abort()


class AsyncBrokerClient:
    """A pipelined asyncio client of one broker (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = "kops",
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_frame_bytes = max_frame_bytes
        self.connects = 0  # successful connects, reconnects included
        self.connect_attempts = 0  # TCP connects tried, failed ones included
        self._connection: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_address(cls, address: str, **settings: Any) -> AsyncBrokerClient:
        """A client of "host:port"."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {address!r}")
        return cls(host.strip("[]"), int(port), **settings)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.closed

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered (abandoned ones included until answered)."""
        connection = self._connection
        return 0 if connection is None or connection.closed else len(connection.correlator)

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- requests ---------------------------------------------------------

    @overload
    async def send(
        self, request: RequestPayload, *, timeout: float | None = None, expect: None = None
    ) -> Any: ...

    @overload
    async def send(
        self, request: RequestPayload, *, timeout: float | None = None, expect: type[R]
    ) -> R: ...

    async def send(
        self,
        request: RequestPayload,
        *,
        timeout: float | None = None,
        expect: type[Any] | None = None,
    ) -> Any:
        """Send one kio request and return its response entity.

        `timeout` (default `request_timeout`) bounds everything: connecting
        if need be, writing, waiting for the answer. `expect` is the response
        class the caller wants back (checked before sending, and it types the
        result). Produce with acks=0 gets no response: returns None once written.

        Raises BrokerConnectionError (cannot connect; retriable),
        ConnectionLostError (dropped while in flight; retriable),
        RequestTimeoutError (retriable), ProtocolError, ClientClosedError.
        """
        api_key, api_version = int(request.__api_key__), int(request.__version__)
        if expect is not None and expect is not response_type(api_key, api_version):
            raise TypeError(
                f"api {api_key} v{api_version} answers with "
                f"{response_type(api_key, api_version).__qualname__}, not {expect.__qualname__}"
            )
        loop = asyncio.get_running_loop()
        budget = self.request_timeout if timeout is None else timeout
        deadline = loop.time() + budget
        connection = await self._connected(deadline)
        expect_response = not (api_key == _PRODUCE_KEY and getattr(request, "acks", -1) == 0)
        waiter: asyncio.Future[Any] = loop.create_future()
        correlation_id, frame = connection.correlator.encode(
            request, waiter, expect_response=expect_response
        )
        try:
            async with asyncio.timeout_at(deadline):
                await connection.write(frame)
                if not expect_response:
                    return None
                return await waiter
        except TimeoutError:
            connection.correlator.abandon(correlation_id)
            raise RequestTimeoutError(
                f"{self.address} did not answer api {api_key} v{api_version} "
                f"(correlation id {correlation_id}) within {budget:g}s"
            ) from None
        except BaseException:
            connection.correlator.abandon(correlation_id)
            raise

    # ---- connection management --------------------------------------------

    async def connect(self, timeout: float | None = None) -> None:
        """Connect now (otherwise the first request does); BrokerConnectionError on failure."""
        loop = asyncio.get_running_loop()
        await self._connected(loop.time() + (self.connect_timeout if timeout is None else timeout))

    async def _connected(self, deadline: float) -> _Connection:
        if self._closed:
            raise ClientClosedError(f"client of {self.address} is closed")
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                await self._connect_lock.acquire()
        except TimeoutError:
            raise BrokerConnectionError(
                f"cannot connect to {self.address}: timed out waiting for another connect"
            ) from None
        try:
            if self._closed:
                raise ClientClosedError(f"client of {self.address} is closed")
            connection = self._connection
            if connection is not None and not connection.closed:
                return connection
            connection = await self._open(min(deadline, loop.time() + self.connect_timeout))
            if self._closed:  # closed while connecting
                connection.close(ClientClosedError(f"client of {self.address} is closed"))
                raise ClientClosedError(f"client of {self.address} is closed")
            self._connection = connection
            self.connects += 1
            return connection
        finally:
            self._connect_lock.release()

    async def _open(self, until: float) -> _Connection:
        """Connect, retrying with exponential backoff until the loop time `until`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = wait_exponential_jitter(
            multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
        )

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(backoff(state), until - loop.time()))

        def stop(state: RetryCallState) -> bool:
            return loop.time() >= until

        def log_retry(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            log.debug("connect to %s failed (%s); retrying", self.address, error)

        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(OSError),  # TimeoutError is an OSError
                wait=wait,
                stop=stop,
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    self.connect_attempts += 1
                    async with asyncio.timeout_at(until):
                        _, protocol = await loop.create_connection(
                            lambda: _Connection(self.address, self.client_id, self.max_frame_bytes),
                            self.host,
                            self.port,
                        )
        except OSError as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise BrokerConnectionError(
                f"cannot connect to {self.address} ({attempts} attempt"
                f"{'s' if attempts != 1 else ''} in {loop.time() - started:.2f}s): {detail}"
            ) from exc
        if self.connects:
            log.info("reconnected to %s", self.address)
        return protocol

    async def close(self) -> None:
        """Fail requests in flight with ClientClosedError and close the connection."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.close(ClientClosedError(f"client of {self.address} closed"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await connection.lost
