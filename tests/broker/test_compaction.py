"""Log compaction through a real broker, produced and consumed with confluent-kafka."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from kops.broker.log import LogConfig, PartitionLog
from kops.broker.log import cleaner as cleaner_mod
from kops.broker.runner import BrokerThread
from kops.testing import TEST_CONFIG, BrokerProcess
from tests.broker.clients import create_topic

KEYS = [b"k%d" % i for i in range(5)]
VERSIONS = 30
TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": "1024"}


def produce_versions(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """VERSIONS values for each key in small lz4 batches, then a tombstone; returns the latest."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 7,  # several records per batch, many batches
            "compression.type": "lz4",
        }
    )
    latest: dict[bytes, bytes | None] = {}
    for version in range(VERSIONS):
        for key in KEYS:
            value = b"%s=v%03d:" % (key, version) + os.urandom(24).hex().encode()
            producer.produce(topic, key=key, value=value)
            latest[key] = value
        producer.poll(0)
    producer.produce(topic, key=b"gone", value=b"soon deleted")
    producer.produce(topic, key=b"gone", value=None)
    latest[b"gone"] = None
    assert producer.flush(30) == 0
    return latest


def consume_to(bootstrap: str, topic: str, last_offset: int, timeout: float = 20) -> list[Message]:
    """Every record from the beginning up to and including `last_offset`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not messages or messages[-1].offset() < last_offset):
        msg = consumer.poll(0.2)
        if msg is not None:
            assert msg.error() is None, msg.error()
            messages.append(msg)
    consumer.close()
    return messages


def check_compacted(
    bootstrap: str, topic: str, latest: dict[bytes, bytes | None], leo: int
) -> None:
    messages = consume_to(bootstrap, topic, leo - 1)
    got = [(m.key(), m.value()) for m in messages]
    assert dict(got) == latest  # the latest value of every key, tombstone included
    assert len(got) == len(latest)  # and nothing else ...
    assert messages[-1].offset() == leo - 1  # ... up to the end of the log
    offsets = [m.offset() for m in messages]
    assert offsets == sorted(set(offsets))


def test_cleaner_keeps_latest_value_per_key(tmp_path: Path) -> None:
    runner = BrokerThread(tmp_path / "data", config=TEST_CONFIG)
    bootstrap = runner.start()
    try:
        create_topic(bootstrap, "compacted", config=TOPIC_CONFIG)
        latest = produce_versions(bootstrap, "compacted")

        # Compacted topics refuse keyless records (INVALID_RECORD, not retried).
        errors: list[KafkaError] = []
        producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10_000})
        producer.produce("compacted", value=b"no key", on_delivery=lambda e, m: errors.append(e))
        producer.flush(15)
        assert [e.code() for e in errors] == [KafkaError.INVALID_RECORD]

        plog = runner.broker.logs.get("compacted", 0)
        assert plog is not None
        leo = runner.call(lambda: plog.log_end_offset)
        assert len(runner.call(lambda: plog.segment_base_offsets)) > 5
        runner.call(plog.roll)  # so that the newest values are in a closed segment too
        stats = runner.call(lambda: runner.broker.logs.compact_all(int(time.time() * 1000)))
        assert stats.logs_cleaned == 1  # type: ignore[attr-defined]
        assert stats.records_removed >= len(KEYS) * (VERSIONS - 1)  # type: ignore[attr-defined]
        # Some lz4 batches kept part of their records: rewritten sparse and uncompressed.
        assert stats.batches_rewritten > 0  # type: ignore[attr-defined]
        assert runner.call(lambda: plog.log_end_offset) == leo
        check_compacted(bootstrap, "compacted", latest, leo)
    finally:
        runner.stop()


class SimulatedCrash(BaseException):
    pass


@pytest.mark.parametrize("step", ["index-swap", "old-deleted"])
def test_restart_during_cleaning_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data)
    bootstrap = broker.start()
    try:
        create_topic(bootstrap, "compacted", config=TOPIC_CONFIG)
        latest = produce_versions(bootstrap, "compacted")
    finally:
        broker.kill()  # unclean: the restart below recovers the log too

    # The cleaner, on the broker's own files, dies half-way through a swap: `step` is
    # before the commit point (rolled back at open) or after it (finished at open).
    plog = PartitionLog(
        data / "compacted-0", LogConfig.from_topic_config(TOPIC_CONFIG), recover=True
    )
    leo = plog.log_end_offset
    plog.high_watermark = leo
    plog.roll()

    def crash(at: str) -> None:
        if at == step:
            raise SimulatedCrash(at)

    monkeypatch.setattr(cleaner_mod, "crash_hook", crash)
    with pytest.raises(SimulatedCrash):
        plog.compact(int(time.time() * 1000))
    plog.close_handles()
    assert any(p.name.endswith((".cleaned", ".swap")) for p in plog.directory.iterdir())

    bootstrap = broker.start()
    try:
        messages = consume_to(bootstrap, "compacted", leo - 1)
        offsets = [m.offset() for m in messages]
        assert offsets == sorted(set(offsets)), "a record is stored twice"
        assert offsets[-1] == leo - 1
        newest: dict[bytes, bytes | None] = {}
        for m in messages:
            newest[m.key()] = m.value()
        assert newest == latest, "a latest value was lost"
        assert not any(p.name.endswith((".cleaned", ".swap")) for p in plog.directory.iterdir())
    finally:
        broker.stop()
