"""Retention, DeleteRecords and truncation of a PartitionLog."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kops.broker.log import LogConfig, LogManager, OffsetOutOfRangeError, PartitionLog
from kops.protocol.batch import build_batch, iter_batches, parse_header


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


# --- the broker's retention pass: LogManager.maybe_roll_all + apply_retention ----------------


def keyed(key: bytes, ts: int) -> bytes:
    return build_batch([(key, b"v" * 20, [])], timestamp_ms=ts)


KEYED = len(keyed(b"k", 0))


def retention_pass(manager: LogManager, now_ms: int) -> None:
    """What the broker's retention timer (kops.broker.housekeeping) runs every log.retention.check.interval.ms."""
    manager.maybe_roll_all(now_ms)
    manager.apply_retention(now_ms)


def test_idle_partitions_roll_by_segment_ms_then_expire(tmp_path: Path) -> None:
    manager = LogManager(tmp_path)
    common = {"segment_ms": 1_000, "retention_ms": 5_000, "segment_bytes": 1 << 20}
    deleting = manager.open_partition("del", 0, LogConfig(**common))  # type: ignore[arg-type]
    both = manager.open_partition("both", 0, LogConfig(cleanup_policy="compact,delete", **common))  # type: ignore[arg-type]
    compact = manager.open_partition("compact", 0, LogConfig(cleanup_policy="compact", **common))  # type: ignore[arg-type]
    logs = (deleting, both, compact)
    for plog in logs:
        for i in range(3):
            plog.append(keyed(b"k%d" % i, 10_000 + i), 0, now_ms=10_000 + i)
        plog.high_watermark = plog.log_end_offset
    retention_pass(manager, 10_999)
    assert [p.segment_base_offsets for p in logs] == [[0]] * 3  # not idle long enough
    retention_pass(manager, 11_000)
    # Idle for segment.ms: every active segment rolled, whatever the cleanup policy ...
    assert [p.segment_base_offsets for p in logs] == [[0, 3]] * 3
    retention_pass(manager, 12_000)  # ... once: the new active segment is empty
    assert [p.segment_base_offsets for p in logs] == [[0, 3]] * 3
    # ... so retention can delete the data, except from a compact-only topic.
    retention_pass(manager, 15_003)
    assert [p.log_start_offset for p in logs] == [3, 3, 0]
    assert [p.segment_base_offsets for p in logs] == [[3], [3], [0, 3]]
    for plog in logs:
        assert plog.append(keyed(b"k", 20_000), 0, now_ms=20_000).base_offset == 3
    manager.close()


def test_compact_delete_topics_are_cleaned_and_expired(tmp_path: Path) -> None:
    config = LogConfig(
        cleanup_policy="compact,delete", segment_bytes=KEYED * 4, retention_ms=10_000
    )
    plog = PartitionLog(tmp_path / "t-0", config, recover=False)
    ts = 100_000
    for i in range(12):  # segments [0-3] [4-7] [8-11], keys a-d, ts 100000 + i
        plog.append(keyed(b"abcd"[i % 4 : i % 4 + 1], ts + i), 0, now_ms=ts + i)
    plog.append(keyed(b"e", 200_000), 0, now_ms=200_000)
    plog.high_watermark = plog.log_end_offset
    assert plog.segment_base_offsets == [0, 4, 8, 12]
    plog.compact(now_ms=ts + 20)
    # Compaction leaves keys a-d at 8-11; the first segment stays, empty.
    kept = [h.base_offset for _, raw in plog.batches(0) for h in [parse_header(raw)]]
    assert kept == [8, 9, 10, 11, 12]
    # 8-11 expire at 110012; the empty first segment (file time: now) does not hold them up.
    assert plog.apply_retention(now_ms=ts + 10_011) == 0
    assert plog.apply_retention(now_ms=ts + 10_012) == 2  # the emptied segment goes along
    assert (plog.log_start_offset, plog.segment_base_offsets) == (12, [12])
    assert plog.compact(now_ms=ts + 10_013, force=True).logs_cleaned == 0  # nothing closed left


def test_a_segment_emptied_by_cleaning_keeps_its_age(tmp_path: Path) -> None:
    """Retention of an empty segment goes by its file time, which cleaning must not reset."""
    now = int(time.time() * 1000)
    old = now - 2 * 3_600_000
    config = LogConfig(
        cleanup_policy="compact,delete", segment_bytes=KEYED * 2, retention_ms=3_600_000
    )
    plog = PartitionLog(tmp_path / "t-0", config, recover=False)
    for i, key in enumerate([b"a", b"b", b"a", b"b", b"c"]):  # [a b] [a b] [c]
        plog.append(keyed(key, old + i), 0, now_ms=old + i)
    plog.high_watermark = plog.log_end_offset
    for path in plog.directory.glob("*.log"):
        os.utime(path, ns=(old * 1_000_000, old * 1_000_000))
    plog.compact(now_ms=now)
    first = plog.directory / f"{0:020d}.log"
    assert plog.segment_base_offsets[0] == 0 and first.stat().st_size == 0
    assert abs(first.stat().st_mtime - old / 1000) < 5
    assert plog.apply_retention(now_ms=now) == 2  # the emptied segment and 2-3
    assert plog.log_start_offset == 4


def test_rolling_basis_after_reopen(tmp_path: Path) -> None:
    """Time since the first batch's timestamp (Kafka's rule), but never from the future."""
    now = int(time.time() * 1000)
    path = tmp_path / "t-0"
    config = LogConfig(segment_ms=60_000)
    past, future = now - 3_600_000, now + 86_400_000
    for first_ts, rolls_at in ((past, past + 60_000), (future, now + 60_000)):
        plog = PartitionLog(path, config, recover=False)
        plog.truncate_fully_and_start_at(0)
        plog.append(keyed(b"k", first_ts), 0)
        plog.close()
        for recover in (False, True):
            plog = PartitionLog(path, config, recover=recover, recovery_point=0)
            plog.maybe_roll(rolls_at - 5_000)
            assert plog.segment_base_offsets == [0]
            plog.maybe_roll(rolls_at + 5_000)
            assert plog.segment_base_offsets == [0, 1]
            plog.close()
            for extra in sorted(path.glob("*.log"))[1:]:
                extra.unlink()
