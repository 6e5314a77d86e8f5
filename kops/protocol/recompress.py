"""Broker-side compression: a topic's compression.type applied to produced batches.

With compression.type=producer (the default) the broker never comes here and
stores batches as produced. With a codec named, a batch sent with another codec
has its records region decompressed and compressed again with the topic's codec,
and its attributes, length and CRC rewritten; everything else in the header
(offsets, timestamps, producer id, epoch and sequence) is kept, so idempotence
and offsets are unaffected.

Codecs are written as the Java broker writes them, so that every client can read
them: snappy in xerial framing (snappy-java's SnappyOutputStream), lz4 as an LZ4
frame of independent 64 KiB blocks without checksums (Kafka's
Lz4BlockOutputStream; the Java consumer refuses linked blocks), gzip and zstd as
plain gzip members and zstd frames, each at the topic's compression.*.level.
"""

from __future__ import annotations

import struct
from types import ModuleType

from kops.protocol.batch import (
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_SNAPPY,
    COMPRESSION_ZSTD,
    HEADER_SIZE,
    _cramjam,
    decompress,
    iter_batches,
    rebuild_batch,
    validate_batches,
)

__all__ = ["CODECS", "compress_records", "recompress_batches"]

CODECS = (COMPRESSION_NONE, COMPRESSION_GZIP, COMPRESSION_SNAPPY, COMPRESSION_LZ4, COMPRESSION_ZSTD)

# snappy-java's stream header: magic, then version 1 and minimum compatible version 1.
_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024  # SnappyOutputStream's default block size
_XERIAL_LENGTH = struct.Struct(">i")

# Magic, FLG 0x60 (version 1, independent blocks, no checksums, no content size),
# BD 0x40 (64 KiB blocks) and the descriptor checksum for those two bytes.
_LZ4_FRAME_HEADER = bytes.fromhex("04224d18604082")
_LZ4_BLOCK = 64 * 1024
_LZ4_STORED = 0x80000000  # block-size flag: the block is stored uncompressed
_LZ4_LENGTH = struct.Struct("<I")
_LZ4_END_MARK = b"\x00\x00\x00\x00"
# Kafka compresses lz4 at its default level with the fast compressor, other levels with HC.
_LZ4_DEFAULT_LEVEL = 9
_ZSTD_DEFAULT_LEVEL = 3


def compress_records(
    codec: int, data: bytes | bytearray | memoryview, level: int | None = None
) -> bytes:
    """A records region compressed with `codec` (batch attribute bits 0-2) the way
    the Java broker compresses it; `level` None or -1 means the codec's default."""
    raw = bytes(data)
    if codec == COMPRESSION_NONE:
        return raw
    if level == -1:
        level = None
    cramjam = _cramjam()
    if codec == COMPRESSION_GZIP:
        return bytes(cramjam.gzip.compress(raw, level=level))
    if codec == COMPRESSION_SNAPPY:
        out = bytearray(_XERIAL_HEADER)
        for start in range(0, len(raw), _XERIAL_BLOCK):
            chunk = bytes(cramjam.snappy.compress_raw(raw[start : start + _XERIAL_BLOCK]))
            out += _XERIAL_LENGTH.pack(len(chunk))
            out += chunk
        return bytes(out)
    if codec == COMPRESSION_LZ4:
        return _lz4_frame(raw, level, cramjam)
    if codec == COMPRESSION_ZSTD:
        return bytes(
            cramjam.zstd.compress(raw, level=_ZSTD_DEFAULT_LEVEL if level is None else level)
        )
    raise ValueError(f"unknown compression codec {codec}")


def _lz4_frame(raw: bytes, level: int | None, cramjam: ModuleType) -> bytes:
    lz4 = cramjam.lz4
    out = bytearray(_LZ4_FRAME_HEADER)
    for start in range(0, len(raw), _LZ4_BLOCK):
        chunk = raw[start : start + _LZ4_BLOCK]
        if level is None or level == _LZ4_DEFAULT_LEVEL:
            block = bytes(lz4.compress_block(chunk, store_size=False))
        else:
            block = bytes(
                lz4.compress_block(
                    chunk, mode="high_compression", compression=level, store_size=False
                )
            )
        if len(block) >= len(chunk):  # incompressible: store it, as the frame format allows
            out += _LZ4_LENGTH.pack(len(chunk) | _LZ4_STORED)
            out += chunk
        else:
            out += _LZ4_LENGTH.pack(len(block))
            out += block
    out += _LZ4_END_MARK
    return bytes(out)


def recompress_batches(
    records: bytes | bytearray | memoryview, codec: int, level: int | None = None
) -> bytes | bytearray | memoryview:
    """A produce request's batches with every batch not in `codec` re-compressed into it.

    Returns `records` itself, untouched, when every batch already uses `codec`
    (control batches are never re-compressed). Raises InvalidBatchError for a batch
    that fails its CRC or does not decompress.
    """
    # A header walk first: the common case (the producer already uses the topic's
    # codec) then costs no CRC pass here; the log's append validates as always.
    if all(h.compression == codec or h.is_control for _, h in iter_batches(records)):
        return records
    # The CRC is checked before re-compressing: a new CRC would hide corruption.
    batches = validate_batches(records)
    mv = records if isinstance(records, memoryview) else memoryview(records)
    out = bytearray()
    for pos, header in batches:
        batch = mv[pos : pos + header.size]
        if header.compression == codec or header.is_control:
            out += batch
            continue
        body = decompress(header.compression, batch[HEADER_SIZE:])
        out += rebuild_batch(
            header,
            compress_records(codec, body, level),
            header.records_count,
            header.max_timestamp,
            codec=codec,
        )
    return out
