"""PartitionLog.offset_for_timestamp answers with the exact record, as Kafka's ListOffsets does."""

from __future__ import annotations

import struct
from pathlib import Path

import crc32c
import pytest

from kops.broker.log import LogConfig, PartitionLog
from kops.protocol.batch import (
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_SNAPPY,
    COMPRESSION_ZSTD,
    build_batch,
    parse_header,
)


def open_log(path: Path, **cfg: int | str) -> PartitionLog:
    return PartitionLog(path / "t-0", LogConfig(**cfg), recover=False)  # type: ignore[arg-type]


def timed(timestamps: list[int], codec: int = COMPRESSION_NONE, key: bytes = b"k") -> bytes:
    """One batch, one record per timestamp (in this order)."""
    return build_batch(
        [(key, b"v%d" % t, []) for t in timestamps],
        record_timestamps=timestamps,
        compression=codec,
    )


def patch_header(
    batch: bytes, *, max_timestamp: int | None = None, attrs: int | None = None
) -> bytes:
    """Rewrite CRC-covered header fields (as a buggy client could send them) and fix the CRC."""
    out = bytearray(batch)
    if max_timestamp is not None:
        struct.pack_into(">q", out, 35, max_timestamp)
    if attrs is not None:
        struct.pack_into(">h", out, 21, attrs)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def expected(records: list[tuple[int, int]], target: int, upper: int | None = None):
    """Reference answer: the first (offset, timestamp) in offset order with timestamp >= target."""
    for offset, ts in records:
        if ts >= target:
            return None if upper is not None and offset >= upper else (offset, ts)
    return None


@pytest.mark.parametrize(
    "codec",
    [COMPRESSION_NONE, COMPRESSION_GZIP, COMPRESSION_SNAPPY, COMPRESSION_LZ4, COMPRESSION_ZSTD],
)
def test_target_inside_a_batch_finds_the_exact_record(tmp_path: Path, codec: int) -> None:
    # Batches of 5 records, timestamps 10 apart; small segments and a dense index.
    log = open_log(tmp_path, segment_bytes=1_000, index_interval_bytes=150)
    written: list[tuple[int, int]] = []
    for b in range(40):
        stamps = [10_000 + 10 * (5 * b + i) for i in range(5)]
        base = log.append(timed(stamps, codec), 0).base_offset
        written += [(base + i, t) for i, t in enumerate(stamps)]
    log.high_watermark = log.log_end_offset
    assert len(log.segment_base_offsets) > 3
    assert log.offset_for_timestamp(10_000 + 10 * 7) == (7, 10_070)  # mid-batch, exact
    assert log.offset_for_timestamp(10_000 + 10 * 7 - 3) == (7, 10_070)  # between records
    for target in range(9_995, 10_000 + 10 * 200 + 5, 5):
        assert log.offset_for_timestamp(target) == expected(written, target), target
        for upper in (0, 7, 8, 100, 200):
            assert log.offset_for_timestamp(target, upper) == expected(written, target, upper)
    log.close()
    log = open_log(tmp_path, segment_bytes=1_000, index_interval_bytes=150)
    for target in range(9_995, 10_000 + 10 * 200 + 5, 15):
        assert log.offset_for_timestamp(target) == expected(written, target), target


def test_out_of_order_timestamps_inside_a_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(timed([100, 300, 200, 250]), 0)  # offsets 0-3
    log.append(timed([260, 400]), 0)  # offsets 4-5
    assert log.offset_for_timestamp(50) == (0, 100)
    assert log.offset_for_timestamp(150) == (1, 300)  # offset order, not timestamp order
    assert log.offset_for_timestamp(300) == (1, 300)
    assert log.offset_for_timestamp(301) == (5, 400)
    assert log.offset_for_timestamp(401) is None


def test_header_max_timestamp_its_records_do_not_reach(tmp_path: Path) -> None:
    """A client's max timestamp larger than any of its records': search on to the next batch."""
    log = open_log(tmp_path, index_interval_bytes=0)
    log.append(patch_header(timed([100, 110]), max_timestamp=500), 0)  # offsets 0-1
    log.append(timed([120, 130]), 0)  # 2-3: header max 130, skipped for 300
    log.append(timed([390, 420]), 0)  # 4-5
    assert log.offset_for_timestamp(105) == (1, 110)
    assert log.offset_for_timestamp(300) == (4, 390)
    assert log.offset_for_timestamp(300, upper_bound=4) is None
    assert log.offset_for_timestamp(400) == (5, 420)
    assert log.offset_for_timestamp(421) is None


def test_log_start_inside_a_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(timed([100, 110, 120, 130]), 0)
    log.append(timed([140]), 0)
    log.high_watermark = log.log_end_offset
    log.delete_records_before(2)
    assert log.offset_for_timestamp(0) == (2, 120)
    assert log.offset_for_timestamp(125) == (3, 130)


def test_log_append_time_records_carry_the_batch_time(tmp_path: Path) -> None:
    log = open_log(tmp_path, message_timestamp_type="LogAppendTime")
    log.append(timed([5, 900_000, 7]), 0, now_ms=123_456)
    log.append(timed([8]), 0, now_ms=200_000)
    assert log.offset_for_timestamp(100) == (0, 123_456)
    assert log.offset_for_timestamp(123_456) == (0, 123_456)
    assert log.offset_for_timestamp(123_457) == (3, 200_000)
    log.high_watermark = log.log_end_offset
    log.delete_records_before(1)
    assert log.offset_for_timestamp(100) == (1, 123_456)


def test_undecodable_batch_answers_with_its_base_offset(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    batch = timed([100, 200])
    log.append(patch_header(batch, attrs=parse_header(batch).attributes | 5), 0)  # codec 5
    assert log.offset_for_timestamp(150) == (0, 200)
