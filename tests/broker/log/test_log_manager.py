"""LogManager: partition directories, checkpoints, clean-shutdown marker."""

from __future__ import annotations

from pathlib import Path

from kops.broker.log import LogConfig, LogManager
from kops.protocol.batch import build_batch


def batch(n: int = 2) -> bytes:
    return build_batch([(None, b"v" * 10, []) for _ in range(n)], timestamp_ms=1_000)


def test_checkpoints_and_clean_shutdown(tmp_path: Path) -> None:
    mgr = LogManager(tmp_path / "data")
    assert mgr.clean_shutdown  # nothing to recover in a fresh directory
    a = mgr.open_partition("my-topic.v2", 0, LogConfig())
    b = mgr.open_partition("a-b-c", 12, LogConfig())
    assert mgr.open_partition("a-b-c", 12, LogConfig()) is b
    assert mgr.get("a-b-c", 12) is b and mgr.get("nope", 0) is None
    for _ in range(3):
        a.append(batch(), 0)
    b.append(batch(5), 0)
    a.high_watermark = 4
    b.high_watermark = b.log_end_offset
    mgr.close()
    data = tmp_path / "data"
    assert (data / ".kafka_cleanshutdown").exists()
    assert (data / "replication-offset-checkpoint").read_text() == (
        "0\n2\na-b-c 12 5\nmy-topic.v2 0 4\n"
    )
    assert (data / "recovery-point-offset-checkpoint").read_text() == (
        "0\n2\na-b-c 12 5\nmy-topic.v2 0 6\n"
    )
    assert (data / "log-start-offset-checkpoint").exists()

    mgr = LogManager(data)
    assert mgr.clean_shutdown
    assert not (data / ".kafka_cleanshutdown").exists()
    assert mgr.existing_partitions() == [("a-b-c", 12), ("my-topic.v2", 0)]
    a = mgr.open_partition("my-topic.v2", 0, LogConfig())
    assert (a.log_end_offset, a.high_watermark, a.checkpointed_high_watermark) == (6, 4, 4)


def test_unclean_shutdown_recovers(tmp_path: Path) -> None:
    mgr = LogManager(tmp_path)
    log = mgr.open_partition("t", 0, LogConfig())
    log.append(batch(), 0)
    log.append(batch(), 0)
    # No close: the marker is missing next time.
    with (tmp_path / "t-0" / f"{0:020d}.log").open("ab") as f:
        f.write(b"\x01\x02\x03")
    mgr2 = LogManager(tmp_path)
    assert not mgr2.clean_shutdown
    log2 = mgr2.open_partition("t", 0, LogConfig())
    assert log2.log_end_offset == 4
    assert log2.checkpointed_high_watermark is None
    assert log2.append(batch(), 0).base_offset == 4
    mgr2.close()
    assert LogManager(tmp_path).clean_shutdown


def test_delete_records_checkpointed_immediately(tmp_path: Path) -> None:
    mgr = LogManager(tmp_path)
    log = mgr.open_partition("t", 0, LogConfig())
    for _ in range(3):
        log.append(batch(), 0)
    log.high_watermark = log.log_end_offset
    log.delete_records_before(3)
    assert "t 0 3" in (tmp_path / "log-start-offset-checkpoint").read_text()
    # Crash, then reopen: the log start is still 3 though the segment starts at 0.
    mgr2 = LogManager(tmp_path)
    log2 = mgr2.open_partition("t", 0, LogConfig())
    assert log2.log_start_offset == 3


def test_delete_partition_and_retention(tmp_path: Path) -> None:
    mgr = LogManager(tmp_path)
    size = len(batch())
    cfg = LogConfig(segment_bytes=size, retention_ms=1000)
    log = mgr.open_partition("gone", 0, cfg)
    keep = mgr.open_partition("keep", 1, cfg)
    for i in range(3):
        keep.append(batch(), 0, now_ms=i)
        log.append(batch(), 0)
    keep.high_watermark = keep.log_end_offset
    mgr.apply_retention(now_ms=10_000)
    assert keep.segment_base_offsets == [4]
    assert keep.log_start_offset == 4
    mgr.delete_partition("gone", 0)
    assert not (tmp_path / "gone-0").exists()
    assert mgr.get("gone", 0) is None
    assert mgr.existing_partitions() == [("keep", 1)]
    (tmp_path / "x-3.abc-delete").mkdir()  # a deletion interrupted by a crash
    mgr.flush_all()
    assert "keep 1 6" in (tmp_path / "recovery-point-offset-checkpoint").read_text()
    mgr.close()
    mgr = LogManager(tmp_path)
    assert not (tmp_path / "x-3.abc-delete").exists()
    assert mgr.existing_partitions() == [("keep", 1)]
    assert mgr.open_partition("keep", 1, cfg).log_start_offset == 4
