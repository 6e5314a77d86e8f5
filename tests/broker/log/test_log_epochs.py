"""Leader-epoch cache: assignment from appends, checkpoint file, KIP-101/279 lookups."""

from __future__ import annotations

from pathlib import Path

from kops.broker.log import LogConfig, PartitionLog
from kops.broker.log.epoch_cache import LeaderEpochCache
from kops.protocol.batch import build_batch


def batch(n: int = 2) -> bytes:
    return build_batch([(None, b"v", []) for _ in range(n)], timestamp_ms=1)


def open_log(path: Path, recover: bool = False) -> PartitionLog:
    return PartitionLog(path / "t-0", LogConfig(segment_bytes=300), recover=recover)


def test_epochs_recorded_and_checkpointed(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch(), 0)  # 0-1
    log.append(batch(), 0)  # 2-3
    log.append(batch(), 2)  # 4-5
    log.append(batch(), 5)  # 6-7
    assert log.latest_epoch() == 5
    assert log.epoch_entries() == [(0, 0), (2, 4), (5, 6)]
    text = (log.directory / "leader-epoch-checkpoint").read_text()
    assert text == "0\n3\n0 0\n2 4\n5 6\n"
    assert log.end_offset_for_epoch(5) == (5, 8)  # latest epoch: the LEO
    assert log.end_offset_for_epoch(0) == (0, 4)
    assert log.end_offset_for_epoch(1) == (0, 4)  # KIP-279: largest epoch <= requested
    assert log.end_offset_for_epoch(3) == (2, 6)
    assert log.end_offset_for_epoch(9) == (-1, -1)
    assert log.end_offset_for_epoch(-1) == (-1, -1)
    log.close()
    log = open_log(tmp_path)
    assert log.epoch_entries() == [(0, 0), (2, 4), (5, 6)]


def test_truncation_and_log_start_trim_epochs(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for epoch in (0, 0, 2, 5):
        log.append(batch(), epoch)
    log.truncate_to(6)
    assert log.epoch_entries() == [(0, 0), (2, 4)]
    assert log.end_offset_for_epoch(2) == (2, 6)
    log.high_watermark = 6
    log.delete_records_before(5)
    assert log.epoch_entries() == [(2, 5)]
    assert log.end_offset_for_epoch(0) == (0, 5)


def test_epoch_cache_rebuilt_from_batches_when_checkpoint_lost(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for epoch in (1, 1, 3, 4):
        log.append(batch(), epoch)
    log.close()
    (tmp_path / "t-0" / "leader-epoch-checkpoint").unlink()
    log = open_log(tmp_path)
    assert log.epoch_entries() == [(1, 0), (3, 4), (4, 6)]
    (tmp_path / "t-0" / "leader-epoch-checkpoint").write_text("garbage")
    log = open_log(tmp_path, recover=True)
    assert log.epoch_entries() == [(1, 0), (3, 4), (4, 6)]


def test_cache_assign_rules(tmp_path: Path) -> None:
    cache = LeaderEpochCache(tmp_path / "ckpt")
    assert not cache.assign(-1, 0)
    assert cache.assign(1, 0)
    assert not cache.assign(1, 5)
    assert not cache.assign(0, 7)  # an older epoch later in the log is ignored
    assert cache.assign(3, 10)
    # A newer epoch starting earlier supersedes the conflicting entries.
    assert cache.assign(4, 5)
    assert cache.entries == [(1, 0), (4, 5)]
    assert cache.end_offset_for(0, 20) == (0, 0)
    assert cache.truncate_from_start(7)
    assert cache.entries == [(4, 7)]
    cache.write()
    other = LeaderEpochCache(tmp_path / "ckpt")
    assert other.load() and other.entries == [(4, 7)]
