"""One request, one response: a minimal blocking Kafka client over kio.

For the few admin calls confluent-kafka's AdminClient lacks (DescribeLogDirs).
Everything else on the client side goes through confluent-kafka.
"""

from __future__ import annotations

import itertools
import socket
import struct
from typing import Any

from kops.protocol.messages import decode_response, encode_request, response_type

_SIZE = struct.Struct(">i")
_correlation_ids = itertools.count(1)


class RequestError(Exception):
    """The broker could not be reached or answered something unreadable."""


def send_request(host: str, port: int, request: Any, *, timeout: float = 10.0) -> Any:
    """Send `request` (a kio request entity) to one broker and return its response."""
    correlation_id = next(_correlation_ids) & 0x7FFFFFFF
    frame = encode_request(correlation_id, request)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(frame)
            (size,) = _SIZE.unpack(_read_exactly(sock, 4))
            payload = _read_exactly(sock, size)
    except OSError as exc:
        raise RequestError(f"cannot reach {host}:{port}: {exc}") from exc
    cls = response_type(request.__api_key__, request.__version__)
    try:
        answered_id, body = decode_response(payload, cls)
    except Exception as exc:
        raise RequestError(f"unreadable response from {host}:{port}: {exc}") from exc
    if answered_id != correlation_id:
        raise RequestError(
            f"{host}:{port} answered correlation id {answered_id}, not {correlation_id}"
        )
    return body


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return bytes(chunks)
