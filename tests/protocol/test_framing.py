"""FrameReader and Correlator, the framing shared by both clients (no broker)."""

from __future__ import annotations

import datetime
import struct

import pytest
from kio.schema.api_versions.v3.response import ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.static.primitive import i32Timedelta, i64

from kops.protocol.errors import ProtocolError
from kops.protocol.framing import Correlator, FrameReader
from kops.protocol.messages import decode_request, encode_response
from tests.protocol import kio_requests as rq


def _frames(*payloads: bytes) -> bytes:
    return b"".join(struct.pack(">i", len(p)) + p for p in payloads)


def _feed(reader: FrameReader, data: bytes, step: int) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        buffer = reader.get_buffer()
        n = min(step, len(buffer), len(data) - pos)
        buffer[:n] = data[pos : pos + n]
        pos += n
        out.extend(bytes(frame) for frame in reader.advance(n))  # copy before the next receive
    return out


@pytest.mark.parametrize("step", [1, 3, 7, 1000, 1 << 20])
def test_frames_survive_any_split(step: int) -> None:
    payloads = [b"", b"a", b"hello" * 50, bytes(range(256)) * 40, b"z" * 5000, b"tail"]
    reader = FrameReader(chunk_size=4096)  # 10 KiB frame is "large" here
    assert _feed(reader, _frames(*payloads), step) == payloads
    assert reader.buffered == 0


def test_large_frame_is_received_into_its_own_buffer() -> None:
    reader = FrameReader(chunk_size=1024)
    big = bytes(range(256)) * 1000
    data = _frames(b"small", big)
    buffer = reader.get_buffer()
    buffer[:100] = data[:100]
    assert [bytes(f) for f in reader.advance(100)] == [b"small"]
    view = reader.get_buffer()
    assert len(view) == len(big) - (100 - 9 - 4)  # exactly the rest of the big frame
    view[:] = data[100:]
    (frame,) = reader.advance(len(view))
    assert frame.readonly
    assert frame == big


def test_out_of_step_size_is_a_protocol_error() -> None:
    reader = FrameReader(max_frame_bytes=100)
    buffer = reader.get_buffer()
    buffer[:4] = struct.pack(">i", 101)
    with pytest.raises(ProtocolError, match="out of range"):
        reader.advance(4)


def test_correlator_matches_by_id_and_drops_abandoned() -> None:
    correlator: Correlator[str] = Correlator("me")
    first, frame1 = correlator.encode(rq.api_versions(), "first")
    second, frame2 = correlator.encode(rq.api_versions(), "second")
    assert second == first + 1
    assert decode_request(frame1[4:]).client_id == "me"
    assert decode_request(frame2[4:]).correlation_id == second
    response = ApiVersionsResponse(
        error_code=ErrorCode.none,
        api_keys=(),
        throttle_time=i32Timedelta.parse(datetime.timedelta(0)),
        supported_features=(),
        finalized_features_epoch=i64(-1),
        finalized_features=(),
        zk_migration_ready=False,
    )
    correlator.abandon(first)
    # Answered out of order: matched by correlation id, not position.
    reply2 = b"".join(encode_response(second, response))[4:]
    entry = correlator.take(reply2)
    assert entry.slot == "second"
    assert entry.decode(reply2) == response
    reply1 = b"".join(encode_response(first, response))[4:]
    assert correlator.take(reply1).slot is None  # abandoned, still recognised
    with pytest.raises(ProtocolError, match="unknown correlation id"):
        correlator.take(reply1)
    assert len(correlator) == 0
