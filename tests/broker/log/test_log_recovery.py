"""Crash recovery: torn tails, lost indexes, corrupt batches (simulated unclean shutdowns)."""

from __future__ import annotations

from pathlib import Path

from kops.broker.log import LogConfig, PartitionLog
from kops.protocol.batch import build_batch, decode_records, iter_batches


def batch(i: int, n: int = 3) -> bytes:
    return build_batch(
        [(f"k{i:03d}".encode(), f"batch{i:03d}-{j}".encode() * 5, []) for j in range(n)],
        timestamp_ms=1_000 + i,
    )


SIZE = len(batch(0))
CFG = {"segment_bytes": SIZE * 5, "index_interval_bytes": SIZE}


def open_log(path: Path, recover: bool, **kw: int) -> PartitionLog:
    return PartitionLog(path / "t-0", LogConfig(**CFG), recover=recover, **kw)  # type: ignore[arg-type]


def values(log: PartitionLog) -> list[bytes]:
    data = log.read(log.log_start_offset, 1 << 30, log.log_end_offset)
    return [
        r.value or b"" for _, h in iter_batches(data) for r in decode_records(data[_ : _ + h.size])
    ]


def crash_with_writes(tmp_path: Path, n: int) -> PartitionLog:
    log = open_log(tmp_path, recover=False)
    for i in range(n):
        log.append(batch(i), 0)
    return log  # deliberately never closed: like kill -9, page-cache writes survive


def seg(base: int, ext: str, tmp_path: Path) -> Path:
    return tmp_path / "t-0" / f"{base:020d}.{ext}"


def test_torn_tail_and_lost_index(tmp_path: Path) -> None:
    crashed = crash_with_writes(tmp_path, 12)  # segments at 0, 15, 30 (active: 2 batches)
    assert crashed.segment_base_offsets == [0, 15, 30]
    expected = values(crashed)
    active = seg(30, "log", tmp_path)
    with active.open("ab") as f:
        f.write(batch(99)[: SIZE // 2])  # half a batch
    seg(30, "index", tmp_path).unlink()
    seg(15, "index", tmp_path).unlink()

    log = open_log(tmp_path, recover=True)
    assert log.log_end_offset == 36
    assert values(log) == expected  # every complete batch, exactly once
    assert active.stat().st_size == 2 * SIZE
    assert seg(30, "index", tmp_path).exists() and seg(15, "index", tmp_path).exists()
    assert len(log._segments[1].index) > 0
    # Lookups through the rebuilt index land on the right batches.
    first = next(iter_batches(log.read(20, 1, 36)))[1]
    assert first.base_offset == 18
    res = log.append(batch(12), 0)
    assert res.base_offset == 36
    assert values(log)[-3:] == [b"batch012-0" * 5, b"batch012-1" * 5, b"batch012-2" * 5]


def test_garbage_tail_is_cut(tmp_path: Path) -> None:
    crash_with_writes(tmp_path, 3)
    with seg(0, "log", tmp_path).open("ab") as f:
        f.write(b"\x00" * 100)  # zeros, as a preallocated/unwritten tail would read
    log = open_log(tmp_path, recover=True)
    assert log.log_end_offset == 9
    assert seg(0, "log", tmp_path).stat().st_size == 3 * SIZE


def test_corrupt_crc_in_the_middle_truncates_from_there(tmp_path: Path) -> None:
    crash_with_writes(tmp_path, 12)
    path = seg(15, "log", tmp_path)
    raw = bytearray(path.read_bytes())
    raw[2 * SIZE + 70] ^= 0xFF  # inside the third batch of the second segment (offsets 21-23)
    path.write_bytes(bytes(raw))
    log = open_log(tmp_path, recover=True)
    assert log.log_end_offset == 21
    assert log.segment_base_offsets == [0, 15]
    assert not seg(30, "log", tmp_path).exists()
    assert not seg(30, "index", tmp_path).exists()
    assert path.stat().st_size == 2 * SIZE
    assert len(values(log)) == 21
    assert log.append(batch(50), 0).base_offset == 21


def test_recovery_point_skips_flushed_segments(tmp_path: Path) -> None:
    log = crash_with_writes(tmp_path, 12)
    log.flush()
    assert log.recovery_point == 36
    # Damage a segment below the recovery point: it is trusted, not re-validated.
    path = seg(0, "log", tmp_path)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with seg(30, "log", tmp_path).open("ab") as f:
        f.write(b"junk")
    recovered = open_log(tmp_path, recover=True, recovery_point=30)
    assert recovered.log_end_offset == 36
    assert seg(30, "log", tmp_path).stat().st_size == 2 * SIZE


def test_clean_open_drops_partial_tail(tmp_path: Path) -> None:
    log = open_log(tmp_path, recover=False)
    log.append(batch(0), 0)
    log.close()
    with seg(0, "log", tmp_path).open("ab") as f:
        f.write(batch(1)[:-5])
    log = open_log(tmp_path, recover=False)
    assert log.log_end_offset == 3
    assert log.append(batch(2), 0).base_offset == 3
    assert len(values(log)) == 6


def test_recover_empty_and_missing_directory(tmp_path: Path) -> None:
    log = open_log(tmp_path, recover=True)
    assert log.log_end_offset == 0
    seg(0, "log", tmp_path).write_bytes(b"")
    log = open_log(tmp_path, recover=True)
    assert log.append(batch(0), 0).base_offset == 0


def test_log_start_checkpoint_beyond_log_end(tmp_path: Path) -> None:
    crash_with_writes(tmp_path, 2)
    log = open_log(tmp_path, recover=True, log_start_offset=50)
    assert (log.log_start_offset, log.log_end_offset) == (50, 50)
    assert log.append(batch(0), 0).base_offset == 50
