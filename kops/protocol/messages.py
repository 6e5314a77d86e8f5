"""Request and response framing around kio's generated schemas.

A Kafka frame is an int32 size followed by a request header and a body. kio
provides one frozen dataclass per (api key, version); this module caches the
readers and writers for those classes and knows which header version goes
with which body.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from functools import cache
from types import ModuleType
from typing import Any

from kio.index import load_payload_module, load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.serial import entity_reader, entity_writer
from kio.serial.writers import (
    write_error_code,
    write_int32,
    write_int64,
    write_legacy_array_length,
    write_legacy_string,
    write_timedelta_i32,
)
from kio.static.constants import EntityType
from kio.static.primitive import i32
from kio.static.protocol import Payload, RequestPayload, ResponsePayload

from kops.errors import KopsError

API_VERSIONS_KEY = 18
PRODUCE_KEY = 0
_NULL_STRING = b"\xff\xff"

_INT32 = struct.Struct(">i")
_KEY_VERSION = struct.Struct(">hh")
_CORRELATION = struct.Struct(">i")


class MalformedRequestError(KopsError):
    """The bytes of a frame do not form a valid request; the connection is closed."""


class UnsupportedVersionError(KopsError):
    """kio has no schema for the requested (api key, version)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RequestFrame:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any


def peek_key_version(frame: bytes | memoryview) -> tuple[int, int, int]:
    """Return (api key, api version, correlation id) without decoding the rest."""
    if len(frame) < 8:
        raise MalformedRequestError(f"frame of {len(frame)} bytes is too short for a header")
    key, version = _KEY_VERSION.unpack_from(frame, 0)
    (correlation_id,) = _CORRELATION.unpack_from(frame, 4)
    return key, version, correlation_id


@cache
def request_type(api_key: int, api_version: int) -> type[RequestPayload]:
    try:
        return load_request_schema(api_key, api_version)
    except Exception as exc:  # kio raises its own index errors
        raise UnsupportedVersionError(f"api {api_key} v{api_version}") from exc


@cache
def response_type(api_key: int, api_version: int) -> type[ResponsePayload]:
    return load_response_schema(api_key, api_version)


@cache
def response_module(api_key: int, api_version: int) -> ModuleType:
    """The kio module holding a response's nested entity classes for one version."""
    return load_payload_module(api_key, api_version, EntityType.response)


@cache
def _reader(cls: type[Any]) -> Any:
    return entity_reader(cls)


@cache
def _writer(cls: type[Any]) -> Any:
    return entity_writer(cls)


def is_legacy_produce(api_key: int, api_version: int) -> bool:
    """Produce v0-2, which kio has no schema for (see decode_request)."""
    return api_key == PRODUCE_KEY and 0 <= api_version < 3


def decode_request(frame: bytes | memoryview) -> RequestFrame:
    """Decode header and body; raises UnsupportedVersionError or MalformedRequestError.

    Produce v0-2 decode as v3 with a null transactional id: by
    ProduceRequest.json, v3 only added that leading field, so the body is
    read by kio's v3 schema and the handler sees the real version.
    """
    api_key, api_version, _ = peek_key_version(frame)
    legacy = is_legacy_produce(api_key, api_version)
    cls = request_type(api_key, 3 if legacy else api_version)
    try:
        header_cls = RequestHeaderV2 if cls.__flexible__ else RequestHeaderV1
        header, offset = _reader(header_cls)(frame, 0)
        if legacy:
            frame = bytes(frame[:offset]) + _NULL_STRING + bytes(frame[offset:])
        body, _ = _reader(cls)(frame, offset)
    except Exception as exc:
        raise MalformedRequestError(f"cannot decode api {api_key} v{api_version}: {exc}") from exc
    return RequestFrame(api_key, api_version, header.correlation_id, header.client_id, body)


class _ChunkBuffer:
    """A write target that keeps large writes by reference instead of copying.

    Fetch responses carry megabytes of record batches read from segment
    files; copying them into one buffer (and again out of it) cost more than
    reading them. Small writes are coalesced; large ones stay separate chunks
    that the connection writes one after another.
    """

    __slots__ = ("_chunks", "_small", "size")

    _LARGE = 16 * 1024

    def __init__(self) -> None:
        self._chunks: list[bytes | bytearray] = []
        self._small = bytearray()
        self.size = 0

    def write(self, data: bytes) -> int:
        length = len(data)
        self.size += length
        if length >= self._LARGE:
            if self._small:
                self._chunks.append(self._small)
                self._small = bytearray()
            self._chunks.append(data)
        else:
            self._small += data
        return length

    def chunks(self) -> list[bytes | bytearray]:
        if self._small:
            self._chunks.append(self._small)
            self._small = bytearray()
        return self._chunks


def encode_response(correlation_id: int, body: Payload) -> list[bytes | bytearray]:
    """Serialise a response with its size prefix and the matching response header.

    Returns the frame as a list of chunks to be written in order. ApiVersions
    always answers with response header v0 (no tagged fields), whatever its
    version: clients read it before they know the broker's ranges.
    """
    cls = type(body)
    buffer = _ChunkBuffer()
    buffer.write(_CORRELATION.pack(correlation_id))
    if cls.__flexible__ and cls.__api_key__ != API_VERSIONS_KEY:
        buffer.write(b"\0")  # empty tagged fields of response header v1
    _writer(cls)(buffer, body)
    return [_INT32.pack(buffer.size), *buffer.chunks()]


def encode_legacy_produce_response(
    correlation_id: int, body: Payload, api_version: int
) -> list[bytes | bytearray]:
    """A Produce v0-2 response from a v3 response body.

    By ProduceResponse.json, v3 is the same as v2; v1 lacks each partition's
    log_append_time and v0 also the throttle time. kio has no schema below
    v3, so those two are written field by field with kio's own writers.
    """
    if api_version == 2:
        return encode_response(correlation_id, body)
    buffer = io.BytesIO()
    buffer.write(_CORRELATION.pack(correlation_id))
    topics = body.responses  # type: ignore[attr-defined]
    write_legacy_array_length(buffer, i32(len(topics)))
    for topic in topics:
        write_legacy_string(buffer, topic.name)
        write_legacy_array_length(buffer, i32(len(topic.partition_responses)))
        for partition in topic.partition_responses:
            write_int32(buffer, partition.index)
            write_error_code(buffer, partition.error_code)
            write_int64(buffer, partition.base_offset)
    if api_version == 1:
        write_timedelta_i32(buffer, body.throttle_time)  # type: ignore[attr-defined]
    data = buffer.getvalue()
    return [_INT32.pack(len(data)), data]


def encode_request(
    correlation_id: int, body: RequestPayload, client_id: str | None = "kops"
) -> bytes:
    """Serialise a request (used by the broker's own replication client and by tests)."""
    cls = type(body)
    header_cls = RequestHeaderV2 if cls.__flexible__ else RequestHeaderV1
    header = header_cls(
        request_api_key=cls.__api_key__,
        request_api_version=cls.__version__,
        correlation_id=i32(correlation_id),
        client_id=client_id,
    )
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    _writer(header_cls)(buffer, header)
    _writer(cls)(buffer, body)
    data = buffer.getbuffer()
    _INT32.pack_into(data, 0, len(data) - 4)
    del data
    return buffer.getvalue()


def decode_response(
    frame: bytes | memoryview, response_cls: type[ResponsePayload]
) -> tuple[int, Any]:
    """(correlation id, body) of a response frame without its size prefix."""
    flexible = response_cls.__flexible__ and response_cls.__api_key__ != API_VERSIONS_KEY
    header_cls = ResponseHeaderV1 if flexible else ResponseHeaderV0
    header, offset = _reader(header_cls)(frame, 0)
    body, _ = _reader(response_cls)(frame, offset)
    return header.correlation_id, body


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def build(cls: type, **values: Any) -> Any:
    """Instantiate a kio entity, dropping values for fields this version lacks.

    Handlers fill one superset of fields for every version they serve; older
    versions simply do not carry the newer fields.
    """
    names = _field_names(cls)
    kwargs = {k: v for k, v in values.items() if k in names}
    if "error_code" in kwargs and not isinstance(kwargs["error_code"], ErrorCode):
        kwargs["error_code"] = ErrorCode(kwargs["error_code"])
    return cls(**kwargs)


def has_field(cls: type, name: str) -> bool:
    return name in _field_names(cls)
