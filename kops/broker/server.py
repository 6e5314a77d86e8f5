"""asyncio connections: read size-prefixed frames, hand them on, write replies.

Nothing here knows Kafka semantics. Requests on one connection are answered
in order, one at a time, as Kafka does (clients match replies by order as well
as by correlation id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kops.broker.aio import cancel_and_wait
from kops.errors import KopsError

log = logging.getLogger("kops.broker.server")

_SIZE = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int


class FrameError(KopsError):
    """A frame that must close its connection (oversized, undecodable)."""


# A handler answers with the reply frame as a list of chunks, or None for no reply.
FrameHandler = Callable[[bytes, Peer], Awaitable[list[bytes | bytearray] | None]]


class FrameServer:
    def __init__(
        self,
        handler: FrameHandler,
        host: str,
        port: int,
        *,
        max_frame_bytes: int,
        on_close: Callable[[Peer], None] | None = None,
    ) -> None:
        self._handler = handler
        # Told of every connection that ends (the cluster's broker liveness uses it).
        self._on_close = on_close
        self._host = host
        self._port = port
        self._max_frame_bytes = max_frame_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=1 << 20, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._connections))
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        address = writer.get_extra_info("peername") or ("?", 0)
        peer = Peer(str(address[0]), int(address[1]))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                size_bytes = await reader.readexactly(4)
                (size,) = _SIZE.unpack(size_bytes)
                if size < 0 or size > self._max_frame_bytes:
                    raise FrameError(
                        f"frame of {size} bytes exceeds socket.request.max.bytes "
                        f"({self._max_frame_bytes})"
                    )
                frame = await reader.readexactly(size)
                reply = await self._handler(frame, peer)
                if reply is not None:
                    for chunk in reply:
                        writer.write(chunk)
                    if writer.transport.get_write_buffer_size() > 1 << 20:
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FrameError as exc:
            log.warning("closing connection from %s:%s: %s", peer.host, peer.port, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception(
                "closing connection from %s:%s after an internal error", peer.host, peer.port
            )
        finally:
            self._connections.discard(task)
            if self._on_close is not None:
                try:
                    self._on_close(peer)
                except Exception:
                    log.exception(
                        "connection-close callback failed for %s:%s", peer.host, peer.port
                    )
            writer.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(writer.wait_closed(), 1)
