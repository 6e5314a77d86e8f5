"""Unclean restarts re-validate only what lies past the recovery point (issue #15).

The recovery point is Kafka's: per partition, the offset up to which the log is
known to be fsynced, kept in recovery-point-offset-checkpoint. These tests drive
the real LogManager / PartitionLog on real files; a "crash" is a manager that is
never closed, as after kill -9 (its page-cache writes survive, the clean-shutdown
marker is missing). The last test does the same to a real broker process.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from kops.broker.log import LogConfig, LogManager, PartitionLog
from kops.broker.log.manager import RECOVERY_POINT_CHECKPOINT
from kops.protocol.batch import (
    InvalidBatchError,
    build_batch,
    check_batch,
    decode_records,
    iter_batches,
)
from kops.testing import BrokerProcess, run_broker, wait_until
from tests.broker.clients import consume_all, create_topic

TOPIC = "t"
# Recent timestamps: segment.ms counts from a reopened segment's first timestamp.
T0 = time.time_ns() // 1_000_000 - 60_000


def batch(i: int) -> bytes:
    return build_batch(
        [(f"k{i:03d}".encode(), f"value-{i:04d}-{j}".encode() * 4, []) for j in range(3)],
        timestamp_ms=T0 + i,
    )


SIZE = len(batch(0))
# Five batches (15 offsets) per segment, an index entry for every other batch.
CONFIG = LogConfig(segment_bytes=SIZE * 5, index_interval_bytes=SIZE)


def open_log(data: Path) -> tuple[LogManager, PartitionLog]:
    mgr = LogManager(data)
    return mgr, mgr.open_partition(TOPIC, 0, CONFIG)


def reopen(data: Path) -> PartitionLog:
    return open_log(data)[1]


def append(plog: PartitionLog, first: int, count: int) -> None:
    for i in range(first, first + count):
        plog.append(batch(i), 0)


def values(plog: PartitionLog) -> list[bytes]:
    data = plog.read(plog.log_start_offset, 1 << 30, plog.log_end_offset)
    return [
        r.value or b"" for p, h in iter_batches(data) for r in decode_records(data[p : p + h.size])
    ]


def segment_file(data: Path, base: int, ext: str = "log") -> Path:
    return data / f"{TOPIC}-0" / f"{base:020d}.{ext}"


def checkpointed(data: Path) -> str:
    return (data / RECOVERY_POINT_CHECKPOINT).read_text()


def flip_byte(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))


def cleanly_stopped_log(data: Path, batches: int = 12) -> list[bytes]:
    """A log of `batches` batches (3 segments for 12) closed cleanly; returns its values."""
    mgr, plog = open_log(data)
    append(plog, 0, batches)
    expected = values(plog)
    mgr.close()
    return expected


def test_unclean_restart_with_nothing_written_revalidates_no_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = cleanly_stopped_log(tmp_path)  # segments 0, 15, 30; LEO 36
    assert checkpointed(tmp_path) == "0\n1\nt 0 36\n"

    mgr, plog = open_log(tmp_path)  # a clean start ...
    assert mgr.clean_shutdown and plog.recovered_segments == 0
    del mgr, plog  # ... then kill -9 with nothing written

    caplog.set_level(logging.INFO, logger="kops.broker.log")
    mgr, plog = open_log(tmp_path)
    assert not mgr.clean_shutdown
    assert plog.recovered_segments == 0  # not even the active segment is re-scanned
    assert "t-0: unclean shutdown: re-validated 0 of 3 segments from recovery point 36" in (
        caplog.text
    )
    assert plog.log_end_offset == 36 and plog.recovery_point == 36
    assert values(plog) == expected
    assert plog.append(batch(99), 0).base_offset == 36  # and the log takes appends


def test_after_an_unclean_start_a_second_crash_revalidates_nothing(tmp_path: Path) -> None:
    cleanly_stopped_log(tmp_path)
    mgr, plog = open_log(tmp_path)
    append(plog, 12, 8)  # 3 batches into segment 30, 5 into a new one at 45: LEO 60
    assert plog.segment_base_offsets == [0, 15, 30, 45]
    expected = values(plog)
    del mgr, plog  # kill -9, nothing flushed since the clean stop at 36

    mgr, plog = open_log(tmp_path)
    assert plog.recovered_segments == 2  # the one holding offset 36, and the one after
    # Recovery synced what it re-validated and checkpointed the new point ...
    assert plog.recovery_point == 60 and "t 0 60" in checkpointed(tmp_path)
    del mgr, plog  # ... so another kill -9, with nothing written since, costs nothing.

    plog = reopen(tmp_path)
    assert plog.recovered_segments == 0
    assert values(plog) == expected


def test_periodic_checkpoint_syncs_rolled_segments_only(tmp_path: Path) -> None:
    cleanly_stopped_log(tmp_path)
    mgr, plog = open_log(tmp_path)
    append(plog, 12, 12)  # LEO 72; the active segment starts at 60
    assert plog.segment_base_offsets[-1] == 60
    assert not mgr.checkpoint_recovery_points(time.time_ns() // 1_000_000)  # not due yet
    assert "t 0 36" in checkpointed(tmp_path)
    # Due one interval later (the broker's checkpoint loop calls it every
    # log.flush.offset.checkpoint.interval.ms).
    later = time.time_ns() // 1_000_000 + mgr.checkpoint_interval_ms
    assert mgr.checkpoint_recovery_points(later)
    # The rolled segments are synced; the active one isn't, so the point stops at its base
    # (claiming the LEO would claim writes that may still be in the page cache only).
    assert plog.recovery_point == 60
    assert checkpointed(tmp_path) == "0\n1\nt 0 60\n"
    assert not mgr.checkpoint_recovery_points(later + 1)  # not again within the interval
    append(plog, 24, 1)
    expected = values(plog)
    del mgr, plog  # kill -9

    plog = reopen(tmp_path)
    assert plog.recovered_segments == 1  # the active segment only
    assert values(plog) == expected


def test_write_after_the_last_checkpoint_is_revalidated(tmp_path: Path) -> None:
    cleanly_stopped_log(tmp_path, batches=11)  # LEO 33, the active segment (30) has 1 batch
    mgr, plog = open_log(tmp_path)
    append(plog, 11, 1)  # offsets 33-35, after the checkpoint
    del mgr, plog
    active = segment_file(tmp_path, 30)
    with active.open("ab") as f:
        f.write(batch(12)[:-7])  # and a write torn by the crash

    plog = reopen(tmp_path)
    assert plog.recovered_segments == 1
    assert plog.log_end_offset == 36  # the whole batch kept, the torn one dropped
    assert active.stat().st_size == 2 * SIZE
    assert values(plog)[-1] == b"value-0011-2" * 4


def test_corrupt_batch_past_the_recovery_point_is_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cleanly_stopped_log(tmp_path)  # recovery point 36, in segment 30 (2 batches)
    mgr, plog = open_log(tmp_path)
    append(plog, 12, 6)  # 3 more batches in segment 30, then segment 45 (3 batches)
    assert plog.segment_base_offsets == [0, 15, 30, 45]
    del mgr, plog
    flip_byte(segment_file(tmp_path, 30), 3 * SIZE + 80)  # a record of offsets 39-41

    caplog.set_level(logging.WARNING, logger="kops.broker.log")
    plog = reopen(tmp_path)
    assert plog.log_end_offset == 39  # cut at the first bad batch ...
    assert plog.segment_base_offsets == [0, 15, 30]  # ... and everything after it deleted
    assert not segment_file(tmp_path, 45).exists()
    assert segment_file(tmp_path, 30).stat().st_size == 3 * SIZE
    assert plog.recovered_segments == 1  # the deleted one is not counted
    assert "recovery truncated" in caplog.text
    assert len(values(plog)) == 39
    assert plog.append(batch(50), 0).base_offset == 39


def test_corrupt_byte_below_the_recovery_point_is_trusted_as_kafka_does(tmp_path: Path) -> None:
    """A segment wholly below the recovery point was fsynced before the point moved past
    it, so (like Kafka's LogLoader) an unclean open doesn't re-read its batches: a bit
    flipped on disk there is neither detected at open nor cut. It is not passed off as
    valid either: fetches serve the batch as stored, with its original CRC, so a client
    that checks CRCs (Java's check.crcs defaults to true, librdkafka's to false) rejects it.
    """
    expected = cleanly_stopped_log(tmp_path)
    mgr, plog = open_log(tmp_path)
    del mgr, plog  # a clean start, then kill -9
    segment = segment_file(tmp_path, 0)
    flip_byte(segment, SIZE + 80)  # a record value in the second batch (offsets 3-5)

    plog = reopen(tmp_path)
    assert plog.recovered_segments == 0
    assert plog.log_end_offset == 36 and segment.stat().st_size == 5 * SIZE  # nothing cut
    raw = plog.read(3, SIZE, plog.log_end_offset)
    assert len(raw) == SIZE
    with pytest.raises(InvalidBatchError, match="CRC mismatch"):
        check_batch(raw, 0, len(raw))  # what a CRC-checking consumer does
    # The batches around it are intact.
    assert check_batch(plog.read(0, SIZE, 36), 0, SIZE).base_offset == 0
    assert values(plog)[9:] == expected[9:]


def test_missing_index_of_a_trusted_segment_is_rebuilt_not_revalidated(tmp_path: Path) -> None:
    cleanly_stopped_log(tmp_path)
    mgr, plog = open_log(tmp_path)
    del mgr, plog
    segment_file(tmp_path, 0, "index").unlink()
    garbage = segment_file(tmp_path, 15, "index")
    garbage.write_bytes(b"\x7f" * 8)  # an entry pointing past the end of the log: insane
    trusted = segment_file(tmp_path, 30, "index")
    os.utime(trusted, ns=(10**9, 10**9))

    plog = reopen(tmp_path)
    assert plog.recovered_segments == 0  # index rebuilds don't re-validate the batches
    assert segment_file(tmp_path, 0, "index").exists()
    assert garbage.read_bytes() != b"\x7f" * 8
    assert trusted.stat().st_mtime_ns == 10**9  # a sane index is loaded as it is
    first = next(iter_batches(plog.read(20, 1, 36)))[1]
    assert first.base_offset == 18  # lookups through the rebuilt index land right


@pytest.mark.parametrize(
    "content",
    [
        None,  # no checkpoint file at all
        b"\xff\xfe\x00garbage",  # not even text
        b"0\n3\nt 0 36\n",  # fewer entries than announced
        b"1\n1\nt 0 36\n",  # an unknown version
        b"0\n1\nother 0 36\n",  # a checkpoint that doesn't mention the partition
    ],
    ids=["missing", "binary", "short", "version", "absent"],
)
def test_unusable_checkpoint_means_full_recovery(tmp_path: Path, content: bytes | None) -> None:
    expected = cleanly_stopped_log(tmp_path)
    mgr, plog = open_log(tmp_path)
    del mgr, plog
    path = tmp_path / RECOVERY_POINT_CHECKPOINT
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)

    plog = reopen(tmp_path)
    assert plog.recovered_segments == 3  # everything, from offset 0
    assert values(plog) == expected


def test_recovery_point_past_the_log_end_means_full_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = cleanly_stopped_log(tmp_path)
    mgr, plog = open_log(tmp_path)
    del mgr, plog
    (tmp_path / RECOVERY_POINT_CHECKPOINT).write_text("0\n1\nt 0 500\n")  # the file lies
    flip_byte(segment_file(tmp_path, 15), 2 * SIZE + 80)  # so nothing is trusted: offsets 21-23

    plog = reopen(tmp_path)
    assert "recovery point 500 is past the log end 36" in caplog.text
    assert plog.recovered_segments == 2  # segment 0, then 15 (cut); 30 deleted
    assert plog.log_end_offset == 21
    assert values(plog) == expected[:21]
    assert plog.recovery_point == 21


def test_broker_sigkill_keeps_acked_records_and_reports_recovered_segments(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data, config={"log.segment.bytes": str(64 * 1024)})
    stderr_path = tmp_path / "broker.log"
    stderr = stderr_path.open("a")
    broker.stderr = stderr.fileno()
    value = b"x" * 200

    def produce(first: int, count: int) -> None:
        producer = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "batch.size": 16 * 1024,  # batches must fit the 64 KiB segments
            }
        )
        failed: list[object] = []
        for i in range(first, first + count):
            producer.produce(
                "durable",
                key=str(i).encode(),
                value=value,
                on_delivery=lambda err, _msg: err and failed.append(err),
            )
            producer.poll(0)
        assert producer.flush(30) == 0 and not failed, failed

    def recovery_lines() -> list[tuple[int, int]]:
        pattern = r"durable-0: unclean shutdown: re-validated (\d+) of (\d+) segments"
        return [(int(a), int(b)) for a, b in re.findall(pattern, stderr_path.read_text())]

    try:
        broker.start()
        create_topic(broker.bootstrap, "durable")
        produce(0, 4000)  # ~900 KB: a dozen segments or so
        assert broker.stop() == 143  # clean: recovery point = LEO
        broker.start()
        produce(4000, 500)  # acknowledged (acks=all), never fsynced
        broker.kill()  # SIGKILL

        broker.start()
        messages = consume_all(broker.bootstrap, "durable", 4500, timeout=30)
        keys = [int(m.key()) for m in messages]
        assert keys == list(range(4500))  # every acknowledged record, once, in order
        [(recovered, total)] = recovery_lines()
        assert total > 10
        assert 1 <= recovered <= 3  # from the segment holding the recovery point on only

        broker.kill()  # again, with nothing written since that start
        broker.start()
        assert recovery_lines()[-1] == (0, total)
        assert len(consume_all(broker.bootstrap, "durable", 4500, timeout=30)) == 4500
    finally:
        broker.stop()
        stderr.close()


def test_running_broker_checkpoints_the_recovery_point_on_its_interval(tmp_path: Path) -> None:
    """The broker's own loop (log.flush.offset.checkpoint.interval.ms) moves the point
    past rolled segments while it runs, not only at a clean stop."""
    data = tmp_path / "data"
    config = {"log.segment.bytes": str(16 * 1024), "log.flush.offset.checkpoint.interval.ms": "200"}
    with run_broker(data, config=config) as bootstrap:
        create_topic(bootstrap, "points")
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "batch.size": 4096})
        failed: list[object] = []
        for _ in range(1000):
            producer.produce(
                "points", value=b"v" * 100, on_delivery=lambda e, _m: e and failed.append(e)
            )
            producer.poll(0)
        assert producer.flush(30) == 0 and not failed, failed

        def point() -> int:
            path = data / RECOVERY_POINT_CHECKPOINT
            text = path.read_text() if path.exists() else ""
            found = re.search(r"^points 0 (\d+)$", text, re.MULTILINE)
            return int(found.group(1)) if found else 0

        wait_until(lambda: point() > 0, timeout=10, message="a recovery point past 0")
        assert 0 < point() < 1000  # the rolled segments' end; the active one is not synced
