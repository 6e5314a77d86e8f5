"""Record batch (magic v2) header glue.

The broker treats batches as opaque blobs: it parses only the 61-byte header,
checks the CRC and rewrites the two fields that sit outside the CRC (base offset
and partition leader epoch). Records are decoded only off the produce/fetch hot
path: internal topics, tests, the log cleaner, ListOffsets by timestamp (one
batch) and the null-key check of compacted topics (`decode_records`,
`iter_raw_records`).

Compressed batches are decompressed with cramjam, imported on first use. Codecs
as clients write them: gzip; snappy either raw (librdkafka) or xerial-framed
(the Java client, kafka-python); lz4 in the LZ4 frame format; zstd frames.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import NamedTuple

import crc32c

from kops.errors import KopsError

__all__ = [
    "CONTROL_ABORT",
    "CONTROL_COMMIT",
    "CORRUPT_MESSAGE",
    "HEADER_SIZE",
    "INVALID_RECORD",
    "MARKER_ATTRIBUTES",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "BatchHeader",
    "InvalidBatchError",
    "RawRecord",
    "Record",
    "batches_end_offset",
    "build_batch",
    "build_marker",
    "compress",
    "decode_records",
    "decompress",
    "iter_batches",
    "iter_raw_records",
    "marker_type",
    "null_key_records",
    "parse_header",
    "read_varint",
    "rebuild_batch",
    "records_body",
    "rewrite_base_offset_and_epoch",
    "set_log_append_time",
    "validate_batches",
    "write_varint",
]

HEADER_SIZE = 61
# Bytes before the CRC-covered region: baseOffset, batchLength, leaderEpoch, magic, crc.
CRC_START = 21
# batchLength counts from the leader epoch onwards, so a whole batch is batchLength + 12.
LENGTH_OVERHEAD = 12
MAGIC_V2 = 2

CORRUPT_MESSAGE = 2
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
INVALID_RECORD = 87

ATTR_COMPRESSION_MASK = 0x07
ATTR_LOG_APPEND_TIME = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20

COMPRESSION_NONE = 0
COMPRESSION_GZIP = 1
COMPRESSION_SNAPPY = 2
COMPRESSION_LZ4 = 3
COMPRESSION_ZSTD = 4
# The Java client's snappy framing (xerial snappy-java SnappyOutputStream).
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16
_XERIAL_CHUNK = struct.Struct(">i")

_HEADER = struct.Struct(">qiibIhiqqqhii")
_BASE_AND_LENGTH = struct.Struct(">qi")
_LAST_OFFSET_DELTA = struct.Struct(">i")
_LAST_OFFSET_DELTA_AT = 23  # after base offset, length, leader epoch, magic, crc, attributes
_BASE_OFFSET = struct.Struct(">q")
_LEADER_EPOCH = struct.Struct(">i")
_CRC = struct.Struct(">I")
_ATTRIBUTES = struct.Struct(">h")
_TIMESTAMP = struct.Struct(">q")
_SEQ_MOD = 1 << 31


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        return self.batch_length + LENGTH_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> int:
        return self.attributes & ATTR_COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    @property
    def log_append_time(self) -> bool:
        return bool(self.attributes & ATTR_LOG_APPEND_TIME)

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return -1
        return (self.base_sequence + self.last_offset_delta) % _SEQ_MOD


class Record(NamedTuple):
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class InvalidBatchError(KopsError):
    """A produce blob that must be rejected; carries the Kafka error code to return."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    return BatchHeader._make(_HEADER.unpack_from(buf, pos))


def iter_batches(
    buf: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int, BatchHeader]]:
    """Walk batch headers without CRC checks; stops quietly at a partial trailing batch.

    Fetch responses and segment tails may legitimately end mid-batch, so a short
    tail is not an error here.
    """
    if end is None:
        end = len(buf)
    unpack = _HEADER.unpack_from
    while pos + HEADER_SIZE <= end:
        header = BatchHeader._make(unpack(buf, pos))
        size = header.batch_length + LENGTH_OVERHEAD
        if header.batch_length < HEADER_SIZE - LENGTH_OVERHEAD or pos + size > end:
            return
        yield pos, header
        pos += size


def check_batch(
    buf: bytes | bytearray | memoryview, pos: int, end: int, *, strict: bool = True
) -> BatchHeader:
    """Validate one batch at `pos` (length, magic, CRC and header sanity) and return its header.

    strict (produce requests) also requires records and, for uncompressed batches, one
    record per offset. Batches a leader's cleaner compacted legitimately break both, so
    follower appends pass strict=False.
    """
    if pos + HEADER_SIZE > end:
        # Pre-v2 message sets can be shorter than our header; sniff magic for a better error.
        if pos + 17 <= end and buf[pos + 16] != MAGIC_V2:
            raise InvalidBatchError(
                UNSUPPORTED_FOR_MESSAGE_FORMAT, f"unsupported magic {buf[pos + 16]}"
            )
        raise InvalidBatchError(CORRUPT_MESSAGE, f"truncated batch header at {pos}")
    header = BatchHeader._make(_HEADER.unpack_from(buf, pos))
    if header.magic != MAGIC_V2:
        raise InvalidBatchError(UNSUPPORTED_FOR_MESSAGE_FORMAT, f"unsupported magic {header.magic}")
    size = header.batch_length + LENGTH_OVERHEAD
    if header.batch_length < HEADER_SIZE - LENGTH_OVERHEAD:
        raise InvalidBatchError(CORRUPT_MESSAGE, f"batch length {header.batch_length} too small")
    if pos + size > end:
        raise InvalidBatchError(CORRUPT_MESSAGE, f"batch at {pos} truncated ({size} bytes)")
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if crc32c.crc32c(mv[pos + CRC_START : pos + size]) != header.crc:
        raise InvalidBatchError(CORRUPT_MESSAGE, f"CRC mismatch in batch at {pos}")
    if header.last_offset_delta < 0:
        raise InvalidBatchError(INVALID_RECORD, "negative last offset delta")
    if not strict:
        return header
    if header.records_count <= 0:
        raise InvalidBatchError(INVALID_RECORD, "batch has no records")
    if header.compression == 0 and header.last_offset_delta != header.records_count - 1:
        raise InvalidBatchError(
            INVALID_RECORD,
            f"last offset delta {header.last_offset_delta} != records count - 1",
        )
    return header


def validate_batches(
    buf: bytes | bytearray | memoryview, *, strict: bool = True
) -> list[tuple[int, BatchHeader]]:
    """Check every batch of a produce `records` blob; returns (position, header) pairs."""
    end = len(buf)
    if end == 0:
        raise InvalidBatchError(CORRUPT_MESSAGE, "empty record set")
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    out: list[tuple[int, BatchHeader]] = []
    pos = 0
    while pos < end:
        header = check_batch(mv, pos, end, strict=strict)
        out.append((pos, header))
        pos += header.batch_length + LENGTH_OVERHEAD
    return out


def rewrite_base_offset_and_epoch(
    buf: bytearray | memoryview, pos: int, base_offset: int, leader_epoch: int
) -> None:
    # Both fields precede the CRC-covered range, so the CRC stays valid.
    _BASE_OFFSET.pack_into(buf, pos, base_offset)
    _LEADER_EPOCH.pack_into(buf, pos + 12, leader_epoch)


def set_log_append_time(buf: bytearray | memoryview, pos: int, size: int, now_ms: int) -> None:
    """Stamp LogAppendTime (attribute bit 3 + max timestamp) and recompute the CRC."""
    (attrs,) = _ATTRIBUTES.unpack_from(buf, pos + 21)
    _ATTRIBUTES.pack_into(buf, pos + 21, attrs | ATTR_LOG_APPEND_TIME)
    _TIMESTAMP.pack_into(buf, pos + 35, now_ms)
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    _CRC.pack_into(buf, pos + 17, crc32c.crc32c(mv[pos + CRC_START : pos + size]))


# --- varint helpers (only for building/decoding records off the hot path) ---


def _write_varint(out: bytearray, value: int) -> None:
    v = (value << 1) ^ (value >> 63)  # zigzag
    v &= 0xFFFFFFFFFFFFFFFF
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = 0
    raw = 0
    while True:
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise InvalidBatchError(CORRUPT_MESSAGE, "varint too long")
    return (raw >> 1) ^ -(raw & 1), pos


# For code that re-encodes a record field (the cleaner's delete horizon).
read_varint, write_varint = _read_varint, _write_varint


def _write_bytes(out: bytearray, data: bytes | None) -> None:
    if data is None:
        _write_varint(out, -1)
    else:
        _write_varint(out, len(data))
        out += data


def _read_bytes(buf: bytes | memoryview, pos: int) -> tuple[bytes | None, int]:
    n, pos = _read_varint(buf, pos)
    if n < 0:
        return None, pos
    if pos + n > len(buf):
        raise InvalidBatchError(CORRUPT_MESSAGE, "record field overruns batch")
    return bytes(buf[pos : pos + n]), pos + n


def _cramjam() -> ModuleType:
    try:
        import cramjam
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InvalidBatchError(
            UNSUPPORTED_FOR_MESSAGE_FORMAT, "compressed batches need the cramjam package"
        ) from exc
    return cramjam


def _xerial_decompress(data: bytes, cramjam: ModuleType) -> bytes:
    out = bytearray()
    pos = _XERIAL_HEADER_SIZE
    end = len(data)
    while pos < end:
        if pos + 4 > end:
            raise InvalidBatchError(CORRUPT_MESSAGE, "truncated xerial snappy chunk length")
        (length,) = _XERIAL_CHUNK.unpack_from(data, pos)
        pos += 4
        if length < 0 or pos + length > end:
            raise InvalidBatchError(CORRUPT_MESSAGE, "truncated xerial snappy chunk")
        out += bytes(cramjam.snappy.decompress_raw(data[pos : pos + length]))
        pos += length
    return bytes(out)


def decompress(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    """The records region of a batch compressed with `codec` (attribute bits 0-2)."""
    if codec == COMPRESSION_NONE:
        return bytes(data)
    cramjam = _cramjam()
    raw = bytes(data)
    try:
        if codec == COMPRESSION_GZIP:
            return bytes(cramjam.gzip.decompress(raw))
        if codec == COMPRESSION_SNAPPY:
            if raw.startswith(_XERIAL_MAGIC):
                return _xerial_decompress(raw, cramjam)
            return bytes(cramjam.snappy.decompress_raw(raw))
        if codec == COMPRESSION_LZ4:
            return bytes(cramjam.lz4.decompress(raw))
        if codec == COMPRESSION_ZSTD:
            return bytes(cramjam.zstd.decompress(raw))
    except InvalidBatchError:
        raise
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise InvalidBatchError(CORRUPT_MESSAGE, f"cannot decompress batch: {exc}") from exc
    raise InvalidBatchError(CORRUPT_MESSAGE, f"unknown compression codec {codec}")


def compress(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    """Compress a records region the way librdkafka does (snappy raw, lz4 frame)."""
    if codec == COMPRESSION_NONE:
        return bytes(data)
    cramjam = _cramjam()
    raw = bytes(data)
    if codec == COMPRESSION_GZIP:
        return bytes(cramjam.gzip.compress(raw))
    if codec == COMPRESSION_SNAPPY:
        return bytes(cramjam.snappy.compress_raw(raw))
    if codec == COMPRESSION_LZ4:
        return bytes(cramjam.lz4.compress(raw))
    if codec == COMPRESSION_ZSTD:
        return bytes(cramjam.zstd.compress(raw))
    raise ValueError(f"unknown compression codec {codec}")


def _pack_batch(
    body: bytes | bytearray,
    base_offset: int,
    leader_epoch: int,
    attributes: int,
    last_offset_delta: int,
    base_timestamp: int,
    max_timestamp: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    records_count: int,
) -> bytes:
    batch = bytearray(HEADER_SIZE)
    batch += body
    _HEADER.pack_into(
        batch,
        0,
        base_offset,
        len(batch) - LENGTH_OVERHEAD,
        leader_epoch,
        MAGIC_V2,
        0,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        records_count,
    )
    _CRC.pack_into(batch, 17, crc32c.crc32c(memoryview(batch)[CRC_START:]))
    return bytes(batch)


def build_batch(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    base_offset: int = 0,
    timestamp_ms: int | None = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    leader_epoch: int = -1,
    *,
    attributes: int = 0,
    compression: int = COMPRESSION_NONE,
    record_timestamps: Sequence[int] | None = None,
) -> bytes:
    """Build a valid v2 batch.

    Every record gets `timestamp_ms` unless `record_timestamps` gives one per record
    (then the base timestamp is the first record's and the max timestamp the largest;
    deltas may be negative, as a client's out-of-order timestamps make them).
    """
    if not records:
        raise ValueError("a batch needs at least one record")
    if record_timestamps is not None:
        if len(record_timestamps) != len(records):
            raise ValueError("record_timestamps needs one timestamp per record")
        base_ts, max_ts = record_timestamps[0], max(record_timestamps)
        ts_deltas = [t - base_ts for t in record_timestamps]
    else:
        if timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
        base_ts = max_ts = timestamp_ms
        ts_deltas = [0] * len(records)
    body = bytearray()
    for delta, (key, value, headers) in enumerate(records):
        rec = bytearray()
        rec.append(0)  # record attributes (unused)
        _write_varint(rec, ts_deltas[delta])
        _write_varint(rec, delta)
        _write_bytes(rec, key)
        _write_bytes(rec, value)
        _write_varint(rec, len(headers))
        for hkey, hval in headers:
            _write_bytes(rec, hkey.encode())
            _write_bytes(rec, hval)
        _write_varint(body, len(rec))
        body += rec
    attrs = (attributes & ~ATTR_COMPRESSION_MASK) | compression
    return _pack_batch(
        compress(compression, body),
        base_offset,
        leader_epoch,
        attrs,
        len(records) - 1,
        base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        len(records),
    )


def records_body(batch: bytes | bytearray | memoryview) -> tuple[BatchHeader, bytes]:
    """A batch's header and its records region, decompressed."""
    header = parse_header(batch)
    if header.size > len(batch):
        raise InvalidBatchError(CORRUPT_MESSAGE, "batch is truncated")
    return header, decompress(header.compression, memoryview(batch)[HEADER_SIZE : header.size])


class RawRecord(NamedTuple):
    """One record located in a records region, keys decoded, values and headers not."""

    start: int  # position of the record's length varint
    end: int  # position just past the record
    offset_delta: int
    timestamp_delta: int
    key: bytes | None
    null_value: bool


def iter_raw_records(body: bytes, count: int) -> Iterator[RawRecord]:
    """Walk `count` records of a (decompressed) records region; copies only keys."""
    read = _read_varint
    n = len(body)
    pos = 0
    for _ in range(count):
        start = pos
        length, pos = read(body, pos)
        end = pos + length
        if length < 0 or end > n:
            raise InvalidBatchError(CORRUPT_MESSAGE, "record overruns batch")
        pos += 1  # record attributes
        ts_delta, pos = read(body, pos)
        off_delta, pos = read(body, pos)
        key_len, pos = read(body, pos)
        if key_len < 0:
            key = None
        else:
            if pos + key_len > end:
                raise InvalidBatchError(CORRUPT_MESSAGE, "record key overruns record")
            key = body[pos : pos + key_len]
            pos += key_len
        value_len, pos = read(body, pos)
        if pos > end:
            raise InvalidBatchError(CORRUPT_MESSAGE, "record overruns its length")
        yield RawRecord(start, end, off_delta, ts_delta, key, value_len < 0)
        pos = end


def null_key_records(batch: bytes | bytearray | memoryview) -> list[int]:
    """The indexes, within the batch, of records with a null key (KIP-467 names them).

    Runs on every append to a compacted topic, so it only skips over varints.
    """
    header, body = records_body(batch)
    n = len(body)
    pos = 0
    missing: list[int] = []
    try:
        for index in range(header.records_count):
            b = body[pos]
            pos += 1
            raw = b & 0x7F
            shift = 7
            while b & 0x80:
                b = body[pos]
                pos += 1
                raw |= (b & 0x7F) << shift
                shift += 7
            end = pos + ((raw >> 1) ^ -(raw & 1))
            if end > n or end <= pos:
                raise InvalidBatchError(CORRUPT_MESSAGE, "record overruns batch")
            p = pos + 1  # record attributes
            while body[p] & 0x80:  # timestamp delta
                p += 1
            p += 1
            while body[p] & 0x80:  # offset delta
                p += 1
            p += 1
            if body[p] == 1:  # key length -1, zigzag-encoded
                missing.append(index)
            pos = end
    except IndexError:
        raise InvalidBatchError(CORRUPT_MESSAGE, "record overruns batch") from None
    return missing


def rebuild_batch(
    header: BatchHeader,
    body: bytes | bytearray,
    records_count: int,
    max_timestamp: int,
    *,
    codec: int = COMPRESSION_NONE,
) -> bytes:
    """A copy of a batch holding `body` as its records region, compressed with
    `codec` (by default uncompressed: the cleaner keeps only some records).

    Base offset, last offset delta, base timestamp, producer fields and the leader
    epoch stay as they were, so each kept record's offset and timestamp deltas stay
    valid and the batch still spans the same offsets (Kafka's cleaner does the same).
    """
    return _pack_batch(
        body,
        header.base_offset,
        header.partition_leader_epoch,
        (header.attributes & ~ATTR_COMPRESSION_MASK) | codec,
        header.last_offset_delta,
        header.base_timestamp,
        max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        records_count,
    )


def decode_records(batch: bytes | bytearray | memoryview) -> list[Record]:
    """Decode the records of one batch, decompressing it if needed (not a hot path)."""
    header, mv = records_body(batch)
    pos = 0
    out: list[Record] = []
    for _ in range(header.records_count):
        length, pos = _read_varint(mv, pos)
        end = pos + length
        if end > len(mv):
            raise InvalidBatchError(CORRUPT_MESSAGE, "record overruns batch")
        pos += 1  # record attributes
        ts_delta, pos = _read_varint(mv, pos)
        off_delta, pos = _read_varint(mv, pos)
        key, pos = _read_bytes(mv, pos)
        value, pos = _read_bytes(mv, pos)
        n_headers, pos = _read_varint(mv, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(n_headers):
            hkey, pos = _read_bytes(mv, pos)
            hval, pos = _read_bytes(mv, pos)
            headers.append(((hkey or b"").decode(), hval))
        # LogAppendTime batches carry the broker time in max_timestamp for every record.
        ts = header.max_timestamp if header.log_append_time else header.base_timestamp + ts_delta
        out.append(Record(header.base_offset + off_delta, ts, key, value, headers))
        pos = end
    return out


# Control records (KIP-98): the key is (version int16 0, type int16); a transaction
# marker's value is (version int16 0, coordinator epoch int32).
CONTROL_ABORT = 0
CONTROL_COMMIT = 1
MARKER_ATTRIBUTES = ATTR_TRANSACTIONAL | ATTR_CONTROL
_CONTROL_KEY = struct.Struct(">hh")
_MARKER_VALUE = struct.Struct(">hi")


def build_marker(
    producer_id: int,
    producer_epoch: int,
    commit: bool,
    coordinator_epoch: int,
    *,
    base_offset: int = 0,
    leader_epoch: int = -1,
    timestamp_ms: int | None = None,
) -> bytes:
    """The control batch that ends a transaction (COMMIT or ABORT) in one partition."""
    key = _CONTROL_KEY.pack(0, CONTROL_COMMIT if commit else CONTROL_ABORT)
    return build_batch(
        [(key, _MARKER_VALUE.pack(0, coordinator_epoch), [])],
        base_offset=base_offset,
        timestamp_ms=timestamp_ms,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=-1,
        leader_epoch=leader_epoch,
        attributes=MARKER_ATTRIBUTES,
    )


def marker_type(batch: bytes | bytearray | memoryview) -> int:
    """The control record type of a control batch (CONTROL_ABORT, CONTROL_COMMIT, ...).

    Decodes the batch's first (only) record's key; raises InvalidBatchError if unreadable.
    """
    _, body = records_body(batch)
    for record in iter_raw_records(body, 1):
        if record.key is None or len(record.key) < _CONTROL_KEY.size:
            break
        _version, kind = _CONTROL_KEY.unpack_from(record.key)
        return int(kind)
    raise InvalidBatchError(CORRUPT_MESSAGE, "control batch without a control record key")


def batches_end_offset(records: bytes | bytearray | memoryview) -> int:
    """The offset after the last whole batch in `records` (-1 if none); headers only."""
    pos, n, last = 0, len(records), -1
    while pos + HEADER_SIZE <= n:
        base, length = _BASE_AND_LENGTH.unpack_from(records, pos)
        if pos + length + LENGTH_OVERHEAD > n:
            break
        last = base + _LAST_OFFSET_DELTA.unpack_from(records, pos + _LAST_OFFSET_DELTA_AT)[0]
        pos += length + LENGTH_OVERHEAD
    return last + 1 if last >= 0 else -1
