"""Compaction of a transactional producer's data through a real broker: the aborted
transaction's records are gone for read_uncommitted readers too, the committed ones
stay, its marker goes (delete.retention.ms=0), and the producer carries on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from kops.broker.log.transactions import is_marker
from kops.broker.runner import BrokerThread
from kops.protocol.batch import iter_batches
from kops.testing import TEST_CONFIG, wait_until
from tests.broker.clients import create_topic
from tests.broker.test_read_committed import consume

TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": "1024", "delete.retention.ms": "0"}


def test_aborted_records_and_their_marker_are_compacted_away(tmp_path: Path) -> None:
    # The test runs the cleaner itself: the broker's own passes would race it.
    config = {**TEST_CONFIG, "log.cleaner.backoff.ms": "3600000"}
    runner = BrokerThread(tmp_path / "data", config=config)
    bootstrap = runner.start()
    try:
        topic = f"txc-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, config=TOPIC_CONFIG)
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": f"tx-{topic}",
                "batch.num.messages": 3,  # several batches, several segments
                "linger.ms": 2,
            }
        )
        producer.init_transactions(30)
        sent: dict[str, list[bytes]] = {}
        for name, commit in (("first", True), ("aborted", False), ("last", True)):
            producer.begin_transaction()
            sent[name] = [b"%s-%d" % (name.encode(), i) for i in range(10)]
            for value in sent[name]:
                producer.produce(topic, key=value, value=value, partition=0)
            assert producer.flush(30) == 0
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        committed = sent["first"] + sent["last"]
        plog = runner.broker.logs.get(topic, 0)
        assert plog is not None

        def settled() -> bool:
            return plog.last_stable_offset == plog.high_watermark == plog.log_end_offset

        wait_until(lambda: runner.call(settled), 10, message="every marker written")
        assert sorted(consume(bootstrap, topic, "read_uncommitted", 30)) == sorted(
            committed + sent["aborted"]
        )

        def markers() -> int:
            data = bytes(plog.read(0, 1 << 24, plog.log_end_offset))
            return sum(1 for _, header in iter_batches(data) if is_marker(header))

        assert runner.call(markers) == 3
        runner.call(plog.roll)  # the last marker into a closed segment too
        stats = runner.call(lambda: runner.broker.logs.compact_all(int(time.time() * 1000)))
        assert stats.aborted_records_removed == 10  # type: ignore[attr-defined]
        assert stats.markers_removed == 1  # type: ignore[attr-defined]
        assert runner.call(markers) == 2  # the commits' stay beside their records

        for isolation in ("read_uncommitted", "read_committed"):
            assert sorted(consume(bootstrap, topic, isolation, 20)) == sorted(committed)
        # The producer's state survived: it carries on with its sequence and epoch.
        producer.begin_transaction()
        producer.produce(topic, key=b"after", value=b"after", partition=0)
        producer.commit_transaction(30)
        assert b"after" in consume(bootstrap, topic, "read_committed", 21)
    finally:
        runner.stop()
