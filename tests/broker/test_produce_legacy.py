"""Produce v0-2: advertised (KAFKA-18659), answered with UNSUPPORTED_VERSION.

The requests are built by hand here (kio has no schema below v3) and the
responses parsed by hand, so the check does not share the broker's codec.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess

import pytest

from tests.broker.clients import consume_all, create_topic, produce

UNSUPPORTED_VERSION = 35


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _legacy_produce(version: int, correlation: int, topic: str, partitions: list[int]) -> bytes:
    # Magic 1 message set: offset, size, crc, magic, attributes, timestamp, key, value.
    message = struct.pack(">bbqi", 1, 0, 0, -1) + struct.pack(">i", 5) + b"hello"
    message_set = struct.pack(">qi", 0, len(message) + 4) + struct.pack(">I", 0) + message
    body = struct.pack(">hhi", 0, version, correlation) + _string("legacy-client")
    body += struct.pack(">hi", 1, 5000)  # acks=1, timeout
    body += struct.pack(">i", 1) + _string(topic) + struct.pack(">i", len(partitions))
    for partition in partitions:
        body += struct.pack(">ii", partition, len(message_set)) + message_set
    return struct.pack(">i", len(body)) + body


def _read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError("connection closed before a full response")
            data += chunk
        return data

    (size,) = struct.unpack(">i", exactly(4))
    return exactly(size)


def _parse(version: int, frame: bytes) -> tuple[int, list[tuple[int, int, int]], int | None]:
    (correlation,) = struct.unpack_from(">i", frame, 0)
    pos = 4
    (topics,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    assert topics == 1
    (name_len,) = struct.unpack_from(">h", frame, pos)
    pos += 2 + name_len
    (count,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    partitions = []
    for _ in range(count):
        index, error, base = struct.unpack_from(">ihq", frame, pos)
        pos += 14
        if version == 2:
            pos += 8  # log_append_time
        partitions.append((index, error, base))
    throttle = None
    if version >= 1:
        (throttle,) = struct.unpack_from(">i", frame, pos)
        pos += 4
    assert pos == len(frame), f"v{version}: {len(frame) - pos} bytes left over"
    return correlation, partitions, throttle


def test_every_legacy_version_is_answered_on_one_connection(
    kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name, partitions=2)
    host, port = kafka_broker.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for version in (0, 1, 2):
            sock.sendall(_legacy_produce(version, 100 + version, topic_name, [0, 1]))
            correlation, partitions, throttle = _parse(version, _read_frame(sock))
            assert correlation == 100 + version
            assert partitions == [(0, UNSUPPORTED_VERSION, -1), (1, UNSUPPORTED_VERSION, -1)]
            assert throttle == (None if version == 0 else 0)
    # Nothing was stored, and the broker still serves a modern producer.
    produce(kafka_broker, topic_name, [(b"k", b"modern", None, 0)])
    assert [m.value() for m in consume_all(kafka_broker, topic_name, 1)] == [b"modern"]


def test_kcat_without_api_version_requests_is_told_why(kafka_broker: str, topic_name: str) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed")
    create_topic(kafka_broker, topic_name)
    # Without ApiVersions librdkafka falls back to a 0.9 broker: Produce v1, message format 0.
    result = subprocess.run(
        [
            kcat,
            "-b",
            kafka_broker,
            "-P",
            "-t",
            topic_name,
            "-p",
            "0",
            "-X",
            "api.version.request=false",
            "-X",
            "broker.version.fallback=0.9.0",
        ],
        input=b"hello\n",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Broker: API version not supported" in result.stderr.decode(errors="replace")
