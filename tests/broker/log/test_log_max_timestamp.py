"""PartitionLog.max_timestamp_and_offset (ListOffsets -3, KIP-734) against a brute-force oracle.

The oracle decodes every record at or after the log start and takes the first
one, in offset order, with the largest timestamp (Kafka 3.8+, KAFKA-16310).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kops.broker.log import LogConfig, PartitionLog
from kops.protocol.batch import COMPRESSION_LZ4, build_batch, decode_records


def open_log(path: Path, recover: bool = False, **cfg: int | str) -> PartitionLog:
    return PartitionLog(path / "t-0", LogConfig(**cfg), recover=recover)  # type: ignore[arg-type]


def batch(timestamps: list[int], compression: int = 0) -> bytes:
    records = [(b"k%d" % i, b"v%d" % i, []) for i in range(len(timestamps))]
    return build_batch(records, record_timestamps=timestamps, compression=compression)


def append(log: PartitionLog, *batches: list[int], compression: int = 0) -> None:
    for timestamps in batches:
        log.append(batch(timestamps, compression), 0)
    log.high_watermark = log.log_end_offset


def oracle(log: PartitionLog) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None
    for _, raw in log.batches():
        for record in decode_records(raw):
            if record.offset < log.log_start_offset:
                continue
            if best is None or record.timestamp > best[1]:
                best = (record.offset, record.timestamp)
    return best


def segment_count(log: PartitionLog) -> int:
    return len(log.segment_base_offsets)


def test_empty_log_has_no_max(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    assert log.max_timestamp_and_offset() is None
    log.close()


def test_mid_batch_max_ties_and_segments(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=150, index_interval_bytes=50)
    # offsets 0-2 | 3 | 4-7 (max 900 at 5 and 7) | 8 | 9 (900 again) | 10-11
    append(log, [500, 100, 300], [200], [400, 900, 200, 900], [700], [900], [600, 800])
    bases = log.segment_base_offsets
    assert len(bases) > 2
    assert max(b for b in bases if b <= 5) < max(b for b in bases if b <= 9)  # 9: a later segment
    assert log.max_timestamp_and_offset() == (5, 900) == oracle(log)
    # A larger timestamp in a compressed batch, in the middle of it.
    append(log, [950, 1200, 1100], compression=COMPRESSION_LZ4)
    assert log.max_timestamp_and_offset() == (13, 1200) == oracle(log)
    # Beyond the high watermark (an uncommitted append): no answer, not a smaller one.
    assert log.max_timestamp_and_offset(upper_bound=13) is None
    assert log.max_timestamp_and_offset(upper_bound=14) == (13, 1200)
    log.close()
    # Reopened (segment maxima come back from the time indexes) and recovered (rebuilt).
    for recover in (False, True):
        log = open_log(tmp_path, recover=recover, segment_bytes=150, index_interval_bytes=50)
        assert log.max_timestamp_and_offset() == (13, 1200)
        log.close()


def test_records_before_the_log_start_do_not_count(tmp_path: Path) -> None:
    log = open_log(tmp_path, index_interval_bytes=30)
    # one segment: offsets 0 | 1-3 (max 800 at 2) | 4 | 5-7
    append(log, [900], [100, 800, 700], [300], [200, 750, 100])
    assert segment_count(log) == 1
    assert log.max_timestamp_and_offset() == (0, 900)
    log.delete_records_before(1)
    assert log.max_timestamp_and_offset() == (2, 800) == oracle(log)
    # Cut into the batch holding the max: its deleted record no longer counts.
    log.delete_records_before(3)
    assert log.max_timestamp_and_offset() == (6, 750) == oracle(log)
    log.delete_records_before(7)
    assert log.max_timestamp_and_offset() == (7, 100) == oracle(log)
    log.delete_records_before(8)
    assert log.max_timestamp_and_offset() is None
    log.close()


def test_log_append_time_answers_the_first_record_of_the_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path, message_timestamp_type="LogAppendTime")
    log.append(batch([5, 6, 7]), 0, now_ms=10_000)
    log.append(batch([1, 2]), 0, now_ms=20_000)
    log.append(batch([3]), 0, now_ms=20_000)  # a tie: the earlier batch wins
    log.high_watermark = log.log_end_offset
    assert log.max_timestamp_and_offset() == (3, 20_000) == oracle(log)
    log.close()


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=5),
        min_size=1,
        max_size=14,
    ),
    segment_bytes=st.sampled_from([150, 300, 1 << 20]),
    compressed=st.booleans(),
    delete_fraction=st.floats(min_value=0, max_value=1),
)
def test_matches_the_oracle(
    batches: list[list[int]], segment_bytes: int, compressed: bool, delete_fraction: float
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        log = open_log(path, segment_bytes=segment_bytes, index_interval_bytes=40)
        append(log, *batches, compression=COMPRESSION_LZ4 if compressed else 0)
        assert log.max_timestamp_and_offset() == oracle(log)
        log.delete_records_before(int(log.log_end_offset * delete_fraction))
        assert log.max_timestamp_and_offset() == oracle(log)
        log.close()
        log = open_log(path, segment_bytes=segment_bytes, index_interval_bytes=40)
        log.high_watermark = log.log_end_offset
        assert log.max_timestamp_and_offset() == oracle(log)
        # The answer is a record's own offset and timestamp.
        found = log.max_timestamp_and_offset()
        if found is not None:
            stamps = {
                r.offset: r.timestamp for _, raw in log.batches() for r in decode_records(raw)
            }
            assert stamps[found[0]] == found[1]
        log.close()
