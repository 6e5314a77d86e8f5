"""Idempotent producer state: duplicates, sequence gaps, epochs, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from kops.broker.log import (
    InvalidProducerEpochError,
    LogConfig,
    OutOfOrderSequenceError,
    PartitionLog,
)
from kops.protocol.batch import build_batch


def pbatch(seq: int, n: int = 2, pid: int = 7, epoch: int = 0) -> bytes:
    return build_batch(
        [(None, f"{seq}-{i}".encode(), []) for i in range(n)],
        timestamp_ms=1,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
    )


def open_log(path: Path, recover: bool = False) -> PartitionLog:
    return PartitionLog(path / "t-0", LogConfig(segment_bytes=500), recover=recover)


def test_duplicate_returns_original_offsets(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(build_batch([(None, b"x", [])]), 0)  # offset 0, not idempotent
    first = log.append(pbatch(0), 0)
    second = log.append(pbatch(2), 0)
    assert (first.base_offset, first.last_offset) == (1, 2)
    assert (second.base_offset, second.last_offset) == (3, 4)
    leo = log.log_end_offset
    dup = log.append(pbatch(0), 0)
    assert (dup.base_offset, dup.last_offset, dup.duplicate) == (1, 2, True)
    assert log.log_end_offset == leo
    assert log.append(pbatch(2), 0).base_offset == 3
    assert log.append(pbatch(4), 0).base_offset == 5


def test_only_last_five_batches_are_deduplicated(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(7):
        log.append(pbatch(i * 2), 0)
    assert log.append(pbatch(4), 0).duplicate  # within the last five
    with pytest.raises(OutOfOrderSequenceError):
        log.append(pbatch(2), 0)  # too old to recognise: out of order


def test_sequence_gap_and_epochs(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(pbatch(0), 0)
    with pytest.raises(OutOfOrderSequenceError) as ei:
        log.append(pbatch(5), 0)
    assert ei.value.error_code == 45
    # A bumped epoch must restart at sequence 0.
    with pytest.raises(OutOfOrderSequenceError):
        log.append(pbatch(2, epoch=1), 0)
    log.append(pbatch(0, epoch=1), 0)
    with pytest.raises(InvalidProducerEpochError) as ei2:
        log.append(pbatch(2, epoch=0), 0)
    assert ei2.value.error_code == 47
    assert log.log_end_offset == 4
    # Unknown producers may start anywhere (their state may have been lost to retention).
    assert log.append(pbatch(1000, pid=99), 0).base_offset == 4


def test_sequence_wraps(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(pbatch((1 << 31) - 2, n=2), 0)  # seqs 2**31-2, 2**31-1
    assert log.append(pbatch(0), 0).base_offset == 2


def test_multi_batch_append_checks_each_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(pbatch(0) + pbatch(2), 0)
    with pytest.raises(OutOfOrderSequenceError):
        log.append(pbatch(4) + pbatch(9), 0)
    assert log.log_end_offset == 4
    # Nothing from the rejected blob was applied.
    assert log.append(pbatch(4), 0).base_offset == 4


def test_state_survives_clean_restart(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(10):  # several rolls, so snapshots exist at segment bases too
        log.append(pbatch(i * 2), 0)
    log.close()
    assert (tmp_path / "t-0" / f"{20:020d}.snapshot").exists()
    log = open_log(tmp_path)
    dup = log.append(pbatch(16), 0)
    assert dup.duplicate and dup.base_offset == 16
    with pytest.raises(OutOfOrderSequenceError):
        log.append(pbatch(30), 0)
    assert log.append(pbatch(20), 0).base_offset == 20


def test_state_survives_unclean_restart(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(10):
        log.append(pbatch(i * 2), 0)
    log.append(pbatch(0, pid=8, epoch=3), 0)
    # No close(): snapshots exist only at roll points; the rest is replayed from headers.
    for snap in (tmp_path / "t-0").glob("*.snapshot"):
        if int(snap.stem) > 10:
            snap.unlink()
    log = open_log(tmp_path, recover=True)
    assert log.append(pbatch(18), 0).duplicate
    assert log.append(pbatch(20), 0).base_offset == 22
    with pytest.raises(InvalidProducerEpochError):
        log.append(pbatch(2, pid=8, epoch=2), 0)
    assert log.producers[8].epoch == 3


def test_truncation_rewinds_producer_state(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(6):
        log.append(pbatch(i * 2), 0)
    log.truncate_to(8)  # keeps sequences 0..7
    assert log.append(pbatch(8), 0).base_offset == 8
    with pytest.raises(OutOfOrderSequenceError):
        log.append(pbatch(12), 0)
