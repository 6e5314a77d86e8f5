"""PartitionLog append/read/roll/index/timestamp behaviour (pure storage, no sockets)."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest

from kops.broker.log import (
    CorruptRecordError,
    LogConfig,
    OffsetOutOfRangeError,
    PartitionLog,
    RecordTooLargeError,
    UnexpectedAppendOffsetError,
)
from kops.protocol.batch import build_batch, decode_records, iter_batches, parse_header


def batch(n: int = 3, ts: int = 1_000, tag: str = "v", **kw: int) -> bytes:
    return build_batch(
        [(f"k{i}".encode(), f"{tag}{i}".encode(), []) for i in range(n)], timestamp_ms=ts, **kw
    )


def offsets(data: bytes) -> list[int]:
    return [r.offset for _, h in iter_batches(data) for r in decode_records(data[_ : _ + h.size])]


def bases(data: bytes) -> list[int]:
    return [h.base_offset for _, h in iter_batches(data)]


def open_log(path: Path, recover: bool = False, **cfg: int | str) -> PartitionLog:
    return PartitionLog(path / "topic-0", LogConfig(**cfg), recover=recover)  # type: ignore[arg-type]


def test_empty_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark, log.size_bytes) == (
        0,
        0,
        0,
        0,
    )
    assert log.read(0, 1000, 0) == b""
    assert (tmp_path / "topic-0" / "00000000000000000000.log").exists()
    assert log.latest_epoch() is None
    assert log.offset_for_timestamp(0) is None


def test_round_trip_and_offsets(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    r1 = log.append(batch(3, tag="a"), leader_epoch=0, now_ms=5)
    r2 = log.append(batch(2, tag="b") + batch(4, tag="c"), leader_epoch=0)
    assert (r1.base_offset, r1.last_offset, r1.log_append_time_ms, r1.log_start_offset) == (
        0,
        2,
        -1,
        0,
    )
    assert (r2.base_offset, r2.last_offset) == (3, 8)
    assert log.log_end_offset == 9
    log.high_watermark = 100  # clamped
    assert log.high_watermark == 9
    data = log.read(0, 1 << 20, log.high_watermark)
    assert offsets(data) == list(range(9))
    assert [r.value for r in decode_records(data)] == [b"a0", b"a1", b"a2"]
    assert bases(data) == [0, 3, 5]
    for _, h in iter_batches(data):
        assert h.partition_leader_epoch == 0
    assert log.size_bytes == len(data)


def test_read_limits(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for _ in range(4):
        log.append(batch(5), 0)
    one = len(batch(5))
    # max_bytes below one batch: the whole first batch anyway (KIP-74)...
    assert bases(log.read(0, 10, 20)) == [0]
    assert len(log.read(0, 10, 20)) == one
    # ...unless the caller already has data for this response.
    assert log.read(0, 10, 20, min_one_batch=False) == b""
    # Never a partial batch at the end.
    assert bases(log.read(0, 2 * one + 5, 20)) == [0, 5]
    # From inside a batch: that batch is returned whole.
    assert bases(log.read(7, 1 << 20, 20)) == [5, 10, 15]
    # upper_bound (the HW) excludes batches that end at or beyond it.
    assert bases(log.read(0, 1 << 20, 12)) == [0, 5]
    assert bases(log.read(0, 1 << 20, 15)) == [0, 5, 10]
    assert log.read(10, 1 << 20, 10) == b""
    assert log.read(20, 1 << 20, 20) == b""
    with pytest.raises(OffsetOutOfRangeError) as ei:
        log.read(21, 100, 20)
    assert ei.value.error_code == 1


def test_read_below_log_start_is_out_of_range(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for _ in range(3):
        log.append(batch(2), 0)
    log.high_watermark = log.log_end_offset
    assert log.delete_records_before(3) == 3
    with pytest.raises(OffsetOutOfRangeError):
        log.read(2, 100, 6)
    # Offset 3 lies inside the batch 2..3, which is still returned whole.
    assert bases(log.read(3, 1 << 20, 6)) == [2, 4]


def test_roll_at_segment_bytes(tmp_path: Path) -> None:
    size = len(batch(3))
    log = open_log(tmp_path, segment_bytes=size * 3)
    for _ in range(10):
        log.append(batch(3), 0)
    assert log.segment_base_offsets == [0, 9, 18, 27]
    d = tmp_path / "topic-0"
    for base in (0, 9, 18, 27):
        for ext in ("log", "index", "timeindex"):
            assert (d / f"{base:020d}.{ext}").exists()
    assert (d / "00000000000000000000.log").stat().st_size == 3 * size
    # Producer-state snapshots are taken at each roll.
    assert (d / f"{9:020d}.snapshot").exists()
    # Reads span segments in one call.
    assert offsets(log.read(4, 1 << 20, 30)) == list(range(3, 30))
    # A blob never splits across segments: segment 27 holds 1 batch, fits 2 more.
    log.append(batch(3) * 2, 0)
    assert log.segment_base_offsets[-1] == 27
    log.append(batch(3) * 2, 0)
    log.append(batch(3) * 2, 0)
    assert log.segment_base_offsets[-3:] == [27, 36, 42]


def test_time_based_roll(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_ms=1000)
    log.append(batch(1), 0, now_ms=10_000)
    log.append(batch(1), 0, now_ms=10_500)
    assert log.segment_base_offsets == [0]
    log.append(batch(1), 0, now_ms=11_000)
    assert log.segment_base_offsets == [0, 2]
    log.maybe_roll(11_500)
    assert log.segment_base_offsets == [0, 2]
    log.maybe_roll(12_000)
    assert log.segment_base_offsets == [0, 2, 3]
    log.maybe_roll(20_000)  # an empty active segment never rolls
    assert log.segment_base_offsets == [0, 2, 3]


def test_index_lookups_after_many_appends(tmp_path: Path) -> None:
    log = open_log(tmp_path, index_interval_bytes=200, segment_bytes=5_000)
    sizes = [1, 2, 5, 1, 3]
    expected_bases = []
    for i in range(300):
        expected_bases.append(log.log_end_offset)
        log.append(batch(sizes[i % 5], ts=1000 + i), 0)
    leo = log.log_end_offset
    assert len(log.segment_base_offsets) > 3
    seg = log._segments[0]
    assert len(seg.index) > 10
    # In-memory index equals the file.
    seg.index.write_pending()
    assert (seg.index.path.stat().st_size) == 8 * len(seg.index)
    for off in range(0, leo, 7):
        data = log.read(off, 1, leo)
        h = parse_header(data)
        assert h.base_offset == expected_bases[bisect.bisect_right(expected_bases, off) - 1]
        assert h.base_offset <= off <= h.last_offset
    log.close()
    reopened = open_log(tmp_path, index_interval_bytes=200, segment_bytes=5_000)
    assert len(reopened._segments[0].index) == len(seg.index)
    assert reopened.log_end_offset == leo
    assert offsets(reopened.read(0, 1 << 30, leo)) == list(range(leo))


def test_missing_index_rebuilt_on_clean_open(tmp_path: Path) -> None:
    log = open_log(tmp_path, index_interval_bytes=100)
    for _ in range(50):
        log.append(batch(3), 0)
    log.close()
    d = tmp_path / "topic-0"
    (d / "00000000000000000000.index").unlink()
    (d / "00000000000000000000.timeindex").write_bytes(b"\x00" * 5)  # not whole entries
    log = open_log(tmp_path, index_interval_bytes=100)
    assert len(log._segments[0].index) > 5
    assert log.log_end_offset == 150
    assert bases(log.read(100, 1, 150)) == [99]


def test_offset_for_timestamp(tmp_path: Path) -> None:
    log = open_log(tmp_path, index_interval_bytes=100, segment_bytes=2000)
    for i in range(100):
        log.append(batch(2, ts=10_000 + i * 10), 0)
    # Batch i holds offsets 2i, 2i+1 and timestamp 10000 + 10 i.
    assert log.offset_for_timestamp(0) == (0, 10_000)
    assert log.offset_for_timestamp(10_000) == (0, 10_000)
    assert log.offset_for_timestamp(10_001) == (2, 10_010)
    assert log.offset_for_timestamp(10_500) == (100, 10_500)
    assert log.offset_for_timestamp(10_990) == (198, 10_990)
    assert log.offset_for_timestamp(10_991) is None
    assert log.offset_for_timestamp(10_500, upper_bound=100) is None
    # KIP-734 as Kafka 3.8+ answers it: the first record with the max timestamp (198, 199 tie).
    assert log.max_timestamp_and_offset() == (198, 10_990)
    # Out-of-order timestamps: the first batch (in offset order) reaching the target wins.
    log.append(batch(1, ts=50_000), 0)
    log.append(batch(1, ts=20_000), 0)
    assert log.offset_for_timestamp(20_000) == (200, 50_000)
    log.close()
    log = open_log(tmp_path, index_interval_bytes=100, segment_bytes=2000)
    assert log.offset_for_timestamp(10_500) == (100, 10_500)
    assert log.offset_for_timestamp(20_000) == (200, 50_000)


def test_log_append_time(tmp_path: Path) -> None:
    log = open_log(tmp_path, message_timestamp_type="LogAppendTime")
    res = log.append(batch(2, ts=5), 0, now_ms=123_456)
    assert res.log_append_time_ms == 123_456
    data = log.read(0, 1 << 20, 2)
    h = parse_header(data)
    assert h.log_append_time and h.max_timestamp == 123_456
    assert [r.timestamp for r in decode_records(data)] == [123_456, 123_456]
    assert log.offset_for_timestamp(100) == (0, 123_456)


def test_rejects_bad_input(tmp_path: Path) -> None:
    log = open_log(tmp_path, max_message_bytes=200)
    bad = bytearray(batch(2))
    bad[-1] ^= 1
    with pytest.raises(CorruptRecordError) as ei:
        log.append(bytes(bad), 0)
    assert ei.value.error_code == 2
    with pytest.raises(RecordTooLargeError):
        log.append(batch(30), 0)
    assert log.log_end_offset == 0


def test_follower_append_keeps_offsets_and_epochs(tmp_path: Path) -> None:
    leader = PartitionLog(tmp_path / "leader", LogConfig(), recover=False)
    leader.append(batch(2), leader_epoch=1)
    leader.append(batch(3), leader_epoch=3)
    follower = PartitionLog(tmp_path / "follower", LogConfig(), recover=False)
    data = leader.read(0, 1 << 20, leader.log_end_offset)
    assert follower.append_as_follower(data) == 5
    assert follower.read(0, 1 << 20, 5) == data
    assert follower.epoch_entries() == [(1, 0), (3, 2)]
    with pytest.raises(UnexpectedAppendOffsetError):
        follower.append_as_follower(data)


def test_batches_iterator(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=400)
    raws = []
    for i in range(12):
        log.append(batch(2, tag=str(i)), 0)
    raws = list(log.batches())
    assert [b for b, _ in raws] == list(range(0, 24, 2))
    assert decode_records(raws[3][1])[0].value == b"30"
    assert [b for b, _ in log.batches(5, upper_bound=11)] == [4, 6, 8]
    assert len(log.segment_base_offsets) > 2


def test_config_from_topic_config() -> None:
    cfg = LogConfig.from_topic_config(
        {
            "segment.bytes": "1024",
            "retention.ms": "-1",
            "cleanup.policy": "compact,delete",
            "message.timestamp.type": "LogAppendTime",
            "unknown.key": "x",
        }
    )
    assert cfg.segment_bytes == 1024 and cfg.retention_ms == -1
    assert cfg.delete_enabled and cfg.log_append_time
    assert cfg.segment_ms == LogConfig().segment_ms
    with pytest.raises(ValueError):
        LogConfig.from_topic_config({"segment.bytes": "lots"})
    with pytest.raises(ValueError):
        LogConfig.from_topic_config({"cleanup.policy": "shred"})
