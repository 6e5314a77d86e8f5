"""Retention, DeleteRecords and truncation of a PartitionLog."""

from __future__ import annotations

from pathlib import Path

import pytest

from kops.broker.log import LogConfig, OffsetOutOfRangeError, PartitionLog
from kops.protocol.batch import build_batch, iter_batches


def batch(n: int = 2, ts: int = 1_000) -> bytes:
    return build_batch([(b"k", b"v" * 20, []) for _ in range(n)], timestamp_ms=ts)


SIZE = len(batch())


def open_log(path: Path, **cfg: int | str) -> PartitionLog:
    cfg.setdefault("segment_bytes", SIZE * 2)
    return PartitionLog(path / "t-0", LogConfig(**cfg), recover=False)  # type: ignore[arg-type]


def fill(log: PartitionLog, n: int, ts0: int = 1_000, step: int = 1_000) -> None:
    for i in range(n):
        log.append(batch(ts=ts0 + i * step), 0, now_ms=ts0 + i * step)
    log.high_watermark = log.log_end_offset


def log_files(log: PartitionLog) -> list[str]:
    return sorted(p.name for p in log.directory.glob("*.log"))


def test_retention_by_time(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_ms=10_000)
    fill(log, 10)  # segments of 2 batches: ts 1k-2k, 3k-4k, ... 9k-10k (active)
    assert log.segment_base_offsets == [0, 4, 8, 12, 16]
    assert log.apply_retention(now_ms=12_000) == 0
    # Segment max timestamps are 2k, 4k, 6k, ...; at 14.5k the first two are > 10 s old.
    assert log.apply_retention(now_ms=14_500) == 2
    assert log.log_start_offset == 8
    assert log.segment_base_offsets == [8, 12, 16]
    assert log_files(log) == [f"{b:020d}.log" for b in (8, 12, 16)]
    assert not (log.directory / f"{0:020d}.index").exists()
    with pytest.raises(OffsetOutOfRangeError):
        log.read(7, 100, 20)
    # The active segment is never deleted, however old.
    assert log.apply_retention(now_ms=10**12) == 2
    assert log.segment_base_offsets == [16]
    assert log.log_start_offset == 16
    assert [h.base_offset for _, h in iter_batches(log.read(16, 1 << 20, 20))] == [16, 18]


def test_retention_respects_high_watermark_and_policy(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_ms=0)
    fill(log, 6)
    log.high_watermark = 5  # inside the second segment
    assert log.apply_retention(now_ms=10**12) == 1
    assert log.segment_base_offsets == [4, 8]
    compact = open_log(tmp_path / "c", retention_ms=0, cleanup_policy="compact")
    fill(compact, 6)
    assert compact.apply_retention(now_ms=10**12) == 0


def test_retention_by_bytes(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_bytes=SIZE * 5, retention_ms=-1)
    fill(log, 9)  # 5 segments: 4 full (2 batches) + active with 1 batch
    assert log.size_bytes == SIZE * 9
    assert log.apply_retention(now_ms=0) == 2  # drop 4 batches -> 5 left
    assert log.size_bytes == SIZE * 5
    assert log.log_start_offset == 8
    assert log.apply_retention(now_ms=0) == 0


def test_delete_records_before(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log, 6)  # offsets 0..11; segments at 0, 4, 8
    log.high_watermark = 10
    with pytest.raises(OffsetOutOfRangeError):
        log.delete_records_before(11)
    assert log.delete_records_before(5) == 5
    assert log.segment_base_offsets == [4, 8]
    assert log.delete_records_before(3) == 5  # never moves back
    assert log.delete_records_before(-1) == 10  # -1 means the high watermark
    assert log.segment_base_offsets == [8]
    with pytest.raises(OffsetOutOfRangeError):
        log.read(9, 100, 12)
    log.high_watermark = 12
    assert log.delete_records_before(12) == 12
    # Deleting everything rolls so the old active segment can go as well.
    assert log.segment_base_offsets == [12]
    assert log.size_bytes == 0 and log.log_end_offset == 12
    assert log.append(batch(), 0).base_offset == 12


def test_truncate_to(tmp_path: Path) -> None:
    log = open_log(tmp_path, index_interval_bytes=0)
    fill(log, 6)
    log.truncate_to(100)  # beyond the end: no-op
    assert log.log_end_offset == 12
    log.truncate_to(7)  # inside batch 6..7: the batch goes
    assert log.log_end_offset == 6
    assert log.segment_base_offsets == [0, 4]
    assert log.high_watermark == 6
    assert not (log.directory / f"{8:020d}.log").exists()
    res = log.append(batch(ts=99_000), 0, now_ms=99_000)
    assert (res.base_offset, log.log_end_offset) == (6, 8)
    assert [h.base_offset for _, h in iter_batches(log.read(0, 1 << 20, 8))] == [0, 2, 4, 6]
    assert log.offset_for_timestamp(50_000) == (6, 99_000)
    log.truncate_to(4)
    assert log.segment_base_offsets == [0] and log.log_end_offset == 4
    log.truncate_to(0)
    assert log.segment_base_offsets == [0] and log.log_end_offset == 0
    assert log.size_bytes == 0
    log.close()
    log = open_log(tmp_path)
    assert log.log_end_offset == 0


def test_truncate_fully_and_start_at(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log, 3)
    log.truncate_fully_and_start_at(100)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (100, 100, 100)
    assert log.segment_base_offsets == [100]
    assert log.append(batch(), 0).base_offset == 100
    log.close()
    log = open_log(tmp_path)
    assert (log.log_start_offset, log.log_end_offset) == (100, 102)
