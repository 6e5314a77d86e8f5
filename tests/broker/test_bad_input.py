"""Bad bytes on the wire close that connection; the broker keeps serving."""

from __future__ import annotations

import random
import socket
import struct

from tests.broker.clients import consume_all, create_topic, produce


def _send(bootstrap: str, payload: bytes, read: bool = True) -> bytes:
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_garbage_frames_do_not_hurt_the_broker(kafka_broker: str, topic_name: str) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        body = rng.randbytes(rng.randint(0, 300))
        _send(kafka_broker, struct.pack(">i", len(body)) + body)
    for _ in range(50):  # valid-looking headers with random bodies, for every api key
        key = rng.randint(0, 70)
        version = rng.randint(0, 12)
        body = struct.pack(">hhi", key, version, 1) + rng.randbytes(rng.randint(0, 100))
        _send(kafka_broker, struct.pack(">i", len(body)) + body)
    # truncated frame: size says more than arrives, then the peer goes away
    _send(kafka_broker, struct.pack(">i", 1000) + b"\x00\x03\x00\x01", read=False)
    # oversized frame is refused without reading it
    assert _send(kafka_broker, struct.pack(">i", 200 * 1024 * 1024)) == b""
    # negative size
    assert _send(kafka_broker, struct.pack(">i", -5)) == b""

    create_topic(kafka_broker, topic_name)
    produce(kafka_broker, topic_name, [(b"k", b"still-alive")])
    assert [m.value() for m in consume_all(kafka_broker, topic_name, 1)] == [b"still-alive"]


def test_api_versions_unknown_version_gets_error_35(kafka_broker: str) -> None:
    body = struct.pack(">hhi", 18, 99, 42) + struct.pack(">h", -1)
    reply = _send(kafka_broker, struct.pack(">i", len(body)) + body)
    _size, correlation, error = struct.unpack(">iih", reply[:10])
    assert correlation == 42
    assert error == 35
    (count,) = struct.unpack(">i", reply[10:14])
    key, low, high = struct.unpack(">hhh", reply[14:20])
    assert count == 1 and key == 18 and low == 0 and high >= 3
