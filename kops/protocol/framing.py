"""Client-side framing shared by the blocking and the asyncio client (sans-io).

- `FrameReader` cuts a byte stream into size-prefixed frames. It hands out the
  buffer to receive into (`recv_into`, `asyncio.BufferedProtocol`), so small
  frames are parsed in place from one reusable buffer and a large frame (a
  Fetch response full of record batches) is received straight into a buffer
  of its own size: no reassembly copies, no slicing copies.
- `Correlator` allocates correlation ids, encodes requests with the matching
  header (via kops.protocol.messages) and matches response frames back to
  their pending request by correlation id, decoding them with the response
  class of the request's (api key, version).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kio.static.protocol import RequestPayload, ResponsePayload

from kops.protocol.errors import ProtocolError
from kops.protocol.messages import API_VERSIONS_KEY, decode_response, encode_request, response_type

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Correlator",
    "FrameReader",
    "Pending",
    "peek_correlation_id",
]

T = TypeVar("T")

_SIZE = struct.Struct(">i")
_INT16 = struct.Struct(">h")
_MAX_CORRELATION_ID = 0x7FFFFFFF
_UNSUPPORTED_VERSION = 35

# Larger than any sane response (fetch.max.bytes defaults to 50 MiB); a bigger
# size prefix means the stream is out of step, not a real frame.
DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024


def peek_correlation_id(frame: bytes | memoryview) -> int:
    """The correlation id of a response frame (without its size prefix)."""
    if len(frame) < 4:
        raise ProtocolError(f"response frame of {len(frame)} bytes has no header")
    (correlation_id,) = _SIZE.unpack_from(frame, 0)
    return int(correlation_id)


class FrameReader:
    """Incremental parser of int32-size-prefixed frames.

    Protocol: `buf = reader.get_buffer()`, receive n bytes into `buf`, then
    `frames = reader.advance(n)`. Each returned frame is a memoryview of the
    payload (size prefix stripped). Views of small frames point into the
    shared receive buffer and are valid only until the next `get_buffer()`;
    decode them before receiving more. Frames larger than `chunk_size` get a
    buffer of their own, received into directly.
    """

    __slots__ = ("_buffer", "_end", "_large", "_large_filled", "_max_frame_bytes", "_start")

    def __init__(
        self, *, chunk_size: int = 64 * 1024, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self._buffer = bytearray(chunk_size)
        self._start = 0  # unparsed bytes are self._buffer[_start:_end]
        self._end = 0
        self._large: bytearray | None = None  # the frame being received in its own buffer
        self._large_filled = 0
        self._max_frame_bytes = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        if self._large is not None:
            return self._large_filled + 4
        return self._end - self._start

    def get_buffer(self) -> memoryview:
        """Where to receive the next bytes (never empty)."""
        if self._large is not None:
            return memoryview(self._large)[self._large_filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start and (
            self._end == len(self._buffer) or self._start > len(self._buffer) // 2
        ):
            pending = self._end - self._start
            self._buffer[:pending] = self._buffer[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buffer)[self._end :]

    def advance(self, nbytes: int) -> list[memoryview]:
        """Account for `nbytes` received into the last buffer; return complete frames."""
        frames: list[memoryview] = []
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled < len(self._large):
                return frames
            frames.append(memoryview(self._large).toreadonly())
            self._large = None
            self._large_filled = 0
            return frames
        self._end += nbytes
        buffer = self._buffer
        while self._end - self._start >= 4:
            (size,) = _SIZE.unpack_from(buffer, self._start)
            if size < 0 or size > self._max_frame_bytes:
                raise ProtocolError(
                    f"frame size {size} is out of range (max {self._max_frame_bytes}): "
                    "the stream is out of step"
                )
            body_start = self._start + 4
            if self._end - body_start >= size:
                frames.append(memoryview(buffer)[body_start : body_start + size].toreadonly())
                self._start = body_start + size
                continue
            if size + 4 > len(buffer):
                # Too large for the shared buffer: give it a buffer of its own,
                # seeded with what has arrived, and receive the rest into it.
                large = bytearray(size)
                have = self._end - body_start
                large[:have] = buffer[body_start : self._end]
                self._large, self._large_filled = large, have
                self._start = self._end = 0
            break
        return frames


@dataclass(slots=True)
class Pending(Generic[T]):
    """A request waiting for its response; `slot` is the waiter (None once abandoned)."""

    correlation_id: int
    api_key: int
    api_version: int
    response_class: type[ResponsePayload]
    slot: T | None

    def decode(self, frame: bytes | memoryview) -> Any:
        """The response body; ProtocolError when the bytes are not this response."""
        try:
            answered, body = decode_response(frame, self.response_class)
        except Exception as exc:
            fallback = self._unsupported_api_versions(frame)
            if fallback is not None:
                return fallback
            raise ProtocolError(
                f"unreadable response to api {self.api_key} v{self.api_version}: {exc}"
            ) from exc
        if answered != self.correlation_id:  # pragma: no cover - checked before decoding
            raise ProtocolError(
                f"response for correlation id {answered}, not {self.correlation_id}"
            )
        return body

    def _unsupported_api_versions(self, frame: bytes | memoryview) -> Any:
        # A broker answers an ApiVersions version it does not know with a v0
        # body carrying UNSUPPORTED_VERSION and the versions it does know.
        if self.api_key != API_VERSIONS_KEY or self.api_version == 0 or len(frame) < 6:
            return None
        (error_code,) = _INT16.unpack_from(frame, 4)
        if error_code != _UNSUPPORTED_VERSION:
            return None
        try:
            return decode_response(frame, response_type(API_VERSIONS_KEY, 0))[1]
        except Exception:
            return None


class Correlator(Generic[T]):
    """Correlation ids and pending requests of one connection."""

    __slots__ = ("_client_id", "_next_id", "_pending")

    def __init__(self, client_id: str | None = "kops", *, first_id: int = 1) -> None:
        self._client_id = client_id
        self._next_id = first_id
        self._pending: dict[int, Pending[T]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def _allocate(self) -> int:
        while True:
            correlation_id = self._next_id
            self._next_id = correlation_id + 1 if correlation_id < _MAX_CORRELATION_ID else 1
            if correlation_id not in self._pending:
                return correlation_id

    def encode(
        self, request: RequestPayload, slot: T, *, expect_response: bool = True
    ) -> tuple[int, bytes]:
        """(correlation id, frame) for `request`; registers it unless no response comes.

        Produce with acks=0 is the one request a broker does not answer: pass
        `expect_response=False`.
        """
        api_key, api_version = int(request.__api_key__), int(request.__version__)
        response_class = response_type(api_key, api_version)
        correlation_id = self._allocate()
        frame = encode_request(correlation_id, request, self._client_id)
        if expect_response:
            self._pending[correlation_id] = Pending(
                correlation_id, api_key, api_version, response_class, slot
            )
        return correlation_id, frame

    def forget(self, correlation_id: int) -> None:
        """Drop a request that was never sent."""
        self._pending.pop(correlation_id, None)

    def abandon(self, correlation_id: int) -> None:
        """Stop waiting for a response (timeout, cancellation), but recognise it when it comes."""
        entry = self._pending.get(correlation_id)
        if entry is not None:
            entry.slot = None

    def take(self, frame: bytes | memoryview) -> Pending[T]:
        """The pending request `frame` answers, removed from the pending set.

        ProtocolError for a correlation id nobody waits for: the stream can no
        longer be trusted and the connection should be closed.
        """
        correlation_id = peek_correlation_id(frame)
        entry = self._pending.pop(correlation_id, None)
        if entry is None:
            raise ProtocolError(f"response for unknown correlation id {correlation_id}")
        return entry

    def drain(self) -> list[T]:
        """Remove every pending request; return the waiters still interested."""
        slots = [entry.slot for entry in self._pending.values() if entry.slot is not None]
        self._pending.clear()
        return slots
