"""Record-batch header glue: build, validate, rewrite, decode."""

from __future__ import annotations

import pytest

from kops.protocol import batch as b


def _recs(n: int) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    return [(f"k{i}".encode(), f"v{i}".encode() * 3, [("h", b"x")]) for i in range(n)]


def test_build_parse_roundtrip() -> None:
    raw = b.build_batch(_recs(3), base_offset=10, timestamp_ms=1234, leader_epoch=5)
    h = b.parse_header(raw)
    assert h.size == len(raw)
    assert h.base_offset == 10 and h.last_offset == 12
    assert h.partition_leader_epoch == 5 and h.magic == 2
    assert h.records_count == 3 and h.max_timestamp == 1234
    assert h.compression == 0 and not h.is_transactional and not h.is_control
    recs = b.decode_records(raw)
    assert [r.offset for r in recs] == [10, 11, 12]
    assert recs[1].key == b"k1" and recs[1].value == b"v1v1v1" and recs[1].headers == [("h", b"x")]
    assert recs[0].timestamp == 1234


def test_null_key_value_and_negative_varints() -> None:
    raw = b.build_batch([(None, None, [("n", None)])], timestamp_ms=0)
    (rec,) = b.decode_records(raw)
    assert rec.key is None and rec.value is None and rec.headers == [("n", None)]


def test_validate_multiple_and_rewrite_keeps_crc() -> None:
    blob = bytearray(b.build_batch(_recs(2)) + b.build_batch(_recs(4)))
    found = b.validate_batches(blob)
    assert [h.records_count for _, h in found] == [2, 4]
    pos, _ = found[1]
    b.rewrite_base_offset_and_epoch(blob, pos, 100, 7)
    h = b.validate_batches(blob)[1][1]
    assert h.base_offset == 100 and h.partition_leader_epoch == 7


def test_crc_mismatch_is_corrupt() -> None:
    blob = bytearray(b.build_batch(_recs(2)))
    blob[-1] ^= 0xFF
    with pytest.raises(b.InvalidBatchError) as ei:
        b.validate_batches(blob)
    assert ei.value.error_code == b.CORRUPT_MESSAGE


def test_truncated_and_bad_magic() -> None:
    raw = b.build_batch(_recs(2))
    with pytest.raises(b.InvalidBatchError) as ei:
        b.validate_batches(raw[:-3])
    assert ei.value.error_code == b.CORRUPT_MESSAGE
    bad = bytearray(raw)
    bad[16] = 1
    with pytest.raises(b.InvalidBatchError) as ei:
        b.validate_batches(bad)
    assert ei.value.error_code == b.UNSUPPORTED_FOR_MESSAGE_FORMAT
    with pytest.raises(b.InvalidBatchError):
        b.validate_batches(b"")


def test_iter_batches_stops_at_partial_tail() -> None:
    one = b.build_batch(_recs(1))
    two = b.build_batch(_recs(2))
    blob = one + two + two[:30]
    assert [p for p, _ in b.iter_batches(blob)] == [0, len(one)]


def test_log_append_time_recomputes_crc() -> None:
    blob = bytearray(b.build_batch(_recs(2), timestamp_ms=5))
    b.set_log_append_time(blob, 0, len(blob), 999)
    h = b.validate_batches(blob)[0][1]
    assert h.log_append_time and h.max_timestamp == 999
    assert all(r.timestamp == 999 for r in b.decode_records(blob))


def test_last_sequence_wraps() -> None:
    raw = b.build_batch(_recs(3), producer_id=1, producer_epoch=0, base_sequence=(1 << 31) - 1)
    h = b.parse_header(raw)
    assert h.last_sequence == 1
