"""Broker-side compression (kops.protocol.recompress): every codec round-trips, the
framing is what Java clients read, and re-compressed batches keep their header."""

from __future__ import annotations

import os

import lz4.frame
import pytest

from kops.protocol.batch import (
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_SNAPPY,
    COMPRESSION_ZSTD,
    CORRUPT_MESSAGE,
    HEADER_SIZE,
    InvalidBatchError,
    build_batch,
    decode_records,
    decompress,
    parse_header,
    validate_batches,
)
from kops.protocol.recompress import CODECS, compress_records, recompress_batches

# Sizes straddle the xerial (32 KiB) and lz4 (64 KiB) block sizes; random bytes
# make lz4 store blocks uncompressed, which the frame format must also carry.
PAYLOADS = {
    "empty": b"",
    "one byte": b"x",
    "text": b"kafka records " * 500,
    "blocks": b"abcdefgh" * 20_000 + os.urandom(70_000) + b"z" * 50_000,
}
LEVELS = {
    COMPRESSION_NONE: [None],
    COMPRESSION_GZIP: [None, -1, 1, 9],
    COMPRESSION_SNAPPY: [None],
    COMPRESSION_LZ4: [None, 1, 9, 17],
    COMPRESSION_ZSTD: [None, -131072, -5, 3, 22],
}


@pytest.mark.parametrize("payload", list(PAYLOADS), ids=str)
@pytest.mark.parametrize(
    ("codec", "level"), [(c, lv) for c in CODECS for lv in LEVELS[c]], ids=lambda v: str(v)
)
def test_compress_then_decompress_is_identity(codec: int, level: int | None, payload: str) -> None:
    data = PAYLOADS[payload]
    assert decompress(codec, compress_records(codec, data, level)) == data


def test_lz4_is_one_frame_of_independent_blocks_as_kafka_writes_it() -> None:
    data = PAYLOADS["blocks"]
    frame = compress_records(COMPRESSION_LZ4, data)
    assert frame[:4] == bytes.fromhex("04224d18")
    flg, bd = frame[4], frame[5]
    # Java's Lz4BlockInputStream refuses linked blocks; no checksums, 64 KiB blocks.
    assert flg & 0x20 and not flg & 0x10 and not flg & 0x04 and not flg & 0x08
    assert (bd >> 4) & 0x07 == 4
    assert lz4.frame.decompress(frame) == data


def test_snappy_is_xerial_framed_as_the_java_broker_writes_it() -> None:
    data = PAYLOADS["blocks"]
    framed = compress_records(COMPRESSION_SNAPPY, data)
    assert framed[:16] == b"\x82SNAPPY\x00" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
    assert decompress(COMPRESSION_SNAPPY, framed) == data


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError):
        compress_records(5, b"x")


def _records(n: int) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    return [
        (f"k{i}".encode(), f"value {i} ".encode() * 20, [("h", f"{i}".encode())]) for i in range(n)
    ]


@pytest.mark.parametrize("target", CODECS)
@pytest.mark.parametrize("source", CODECS)
def test_recompress_rewrites_codec_and_keeps_the_rest(source: int, target: int) -> None:
    batch = build_batch(
        _records(30),
        base_offset=0,
        record_timestamps=[1_000 + i for i in range(30)],
        producer_id=7,
        producer_epoch=2,
        base_sequence=11,
        compression=source,
    )
    out = recompress_batches(batch, target)
    if source == target:
        assert out is batch  # untouched: no decode, no copy
        return
    before, after = parse_header(batch), parse_header(out)
    assert after.compression == target
    assert after.batch_length == len(out) - 12
    keep = (
        "base_offset",
        "partition_leader_epoch",
        "last_offset_delta",
        "base_timestamp",
        "max_timestamp",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "records_count",
    )
    assert [getattr(after, f) for f in keep] == [getattr(before, f) for f in keep]
    assert after.attributes & ~0x07 == before.attributes & ~0x07
    validate_batches(out)  # length and CRC-32C are right
    assert decode_records(out) == decode_records(batch)


def test_recompress_handles_several_batches_and_leaves_matching_ones_as_they_are() -> None:
    gzip = build_batch(_records(3), base_offset=0, compression=COMPRESSION_GZIP)
    zstd = build_batch(_records(4), base_offset=3, compression=COMPRESSION_ZSTD)
    plain = build_batch(_records(2), base_offset=7)
    out = bytes(recompress_batches(gzip + zstd + plain, COMPRESSION_ZSTD))
    batches = validate_batches(out)
    assert [h.compression for _, h in batches] == [COMPRESSION_ZSTD] * 3
    assert out[batches[1][0] : batches[1][0] + batches[1][1].size] == zstd
    assert [len(decode_records(out[p : p + h.size])) for p, h in batches] == [3, 4, 2]


def test_recompress_refuses_a_corrupt_batch_rather_than_hiding_it() -> None:
    batch = bytearray(build_batch(_records(5), compression=COMPRESSION_GZIP))
    batch[HEADER_SIZE + 3] ^= 0xFF  # inside the CRC-covered records region
    with pytest.raises(InvalidBatchError) as info:
        recompress_batches(bytes(batch), COMPRESSION_LZ4)
    assert info.value.error_code == CORRUPT_MESSAGE
