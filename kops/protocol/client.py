"""One request, one response: a minimal blocking Kafka client over kio.

For the few admin calls confluent-kafka's AdminClient lacks (DescribeLogDirs).
Everything else on the client side goes through confluent-kafka. Framing,
headers and correlation are shared with the asyncio client
(kops.protocol.framing); errors come from kops.protocol.errors.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from kio.static.protocol import RequestPayload

from kops.protocol.errors import (
    BrokerConnectionError,
    ConnectionLostError,
    ProtocolError,
    RequestError,
    RequestTimeoutError,
)
from kops.protocol.framing import Correlator, FrameReader

__all__ = ["RequestError", "send_request"]


def send_request(
    host: str,
    port: int,
    request: RequestPayload,
    *,
    timeout: float = 10.0,
    client_id: str | None = "kops",
) -> Any:
    """Send `request` (a kio request entity) to one broker and return its response.

    `timeout` bounds the whole exchange. Raises a RequestError subclass:
    BrokerConnectionError (cannot connect), ConnectionLostError (dropped
    before answering), RequestTimeoutError, ProtocolError (unreadable answer).
    """
    deadline = time.monotonic() + timeout
    correlator: Correlator[None] = Correlator(client_id)
    _, frame = correlator.encode(request, None)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise BrokerConnectionError(f"cannot reach {host}:{port}: connect timed out") from exc
    except OSError as exc:
        raise BrokerConnectionError(f"cannot reach {host}:{port}: {exc}") from exc
    with sock:
        try:
            sock.sendall(frame)
            return _receive(sock, correlator, deadline)
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"{host}:{port} did not answer api {request.__api_key__} "
                f"v{request.__version__} within {timeout:g}s"
            ) from exc
        except ProtocolError as exc:
            raise ProtocolError(f"{host}:{port}: {exc}") from exc
        except OSError as exc:
            raise ConnectionLostError(f"connection to {host}:{port} lost: {exc}") from exc


def _receive(sock: socket.socket, correlator: Correlator[None], deadline: float) -> Any:
    reader = FrameReader()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        received = sock.recv_into(reader.get_buffer())
        if not received:
            raise OSError("connection closed by the broker")
        for frame in reader.advance(received):
            return correlator.take(frame).decode(frame)
