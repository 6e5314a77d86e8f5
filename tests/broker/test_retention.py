"""Retention runs in the background and advances the log start offset."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from kops.testing import run_broker, wait_until
from tests.broker.clients import consume_all, create_topic, produce


def _watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()


def test_retention_by_bytes_deletes_old_segments(tmp_path: Path) -> None:
    with run_broker(tmp_path, config={"log.retention.check.interval.ms": "200"}) as bootstrap:
        create_topic(
            bootstrap, "sized", config={"segment.bytes": "2048", "retention.bytes": "4096"}
        )
        for i in range(40):  # one batch per produce call, so segments fill and roll
            produce(bootstrap, "sized", [(None, f"{i:04d}".encode() * 50)])

        def closed_bytes() -> int:
            return sum(p.stat().st_size for p in sorted((tmp_path / "sized-0").glob("*.log"))[:-1])

        # retention.bytes keeps the newest closed segments within the limit
        # (plus the segment that crosses it); the active segment never counts.
        wait_until(lambda: closed_bytes() <= 4096 + 2048, 10, message="retention.bytes to apply")
        low, high = _watermarks(bootstrap, "sized")
        for _ in range(20):  # let retention settle before reading from the log start
            # Not polling for a condition: two equal readings a retention pass
            # apart mean the log start stopped moving.
            time.sleep(0.6)
            previous, (low, high) = low, _watermarks(bootstrap, "sized")
            if low == previous:
                break
        assert high == 40
        assert 0 < low < 40
        remaining = sorted((tmp_path / "sized-0").glob("*.log"))
        assert remaining[0].name == f"{low:020d}.log"
        messages = consume_all(bootstrap, "sized", 40 - low)
        assert [m.offset() for m in messages] == list(range(low, 40))


def test_retention_by_time_with_segment_ms_roll(tmp_path: Path) -> None:
    with run_broker(tmp_path, config={"log.retention.check.interval.ms": "200"}) as bootstrap:
        create_topic(bootstrap, "timed", config={"retention.ms": "500", "segment.ms": "300"})
        produce(bootstrap, "timed", [(None, b"old")] * 5)
        wait_until(lambda: _watermarks(bootstrap, "timed")[0] >= 5, 10, message="retention.ms")
        assert _watermarks(bootstrap, "timed") == (5, 5)
        # Keep what comes next: the log carries on from offset 5.
        keep = ConfigResource(
            "topic",
            "timed",
            incremental_configs=[
                ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.incremental_alter_configs([keep])[keep].result(10)
        produce(bootstrap, "timed", [(None, b"new")])
        messages = consume_all(bootstrap, "timed", 1)
        assert [(m.offset(), m.value()) for m in messages] == [(5, b"new")]
