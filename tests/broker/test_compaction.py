"""Log compaction through a real broker, produced and consumed with confluent-kafka."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from kops.broker.groups.storage import OFFSETS_TOPIC, partition_for
from kops.broker.log import LogConfig, PartitionLog
from kops.broker.log import cleaner as cleaner_mod
from kops.broker.runner import BrokerThread
from kops.protocol.batch import decode_records, iter_batches
from kops.testing import TEST_CONFIG, BrokerProcess, run_broker, wait_until
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


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """:func:`kops.testing.wait_until`, under this file's old name."""
    return wait_until(condition, timeout, message=what)


def test_background_cleaner_compacts_a_topic(tmp_path: Path) -> None:
    """No help from the test: segment.ms rolls the idle partition, the cleaner loop cleans it."""
    config = {"log.cleaner.backoff.ms": "200", "log.retention.check.interval.ms": "200"}
    with run_broker(tmp_path, config=config) as bootstrap:
        create_topic(
            bootstrap,
            "auto",
            config={
                **TOPIC_CONFIG,
                "min.cleanable.dirty.ratio": "0.01",
                "segment.ms": "500",  # so that the newest values get cleaned too
            },
        )
        latest = produce_versions(bootstrap, "auto")
        leo = len(KEYS) * VERSIONS + 2  # written: 152 records, 6 keys

        def one_record_per_key() -> bool:
            return len(consume_to(bootstrap, "auto", leo - 1, timeout=5)) == len(latest)

        wait_for(one_record_per_key, 30, "the cleaner to leave one record per key")
        check_compacted(bootstrap, "auto", latest, leo)
        assert (tmp_path / "auto-0" / cleaner_mod.STATE_FILE).exists()


# --- SIGKILL while the broker's own cleaner runs ---------------------------------------------

BIG_KEYS = 1500
BIG_VERSIONS = 20
BIG_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(256 * 1024)}
CLEANER_OFF = {"log.cleaner.backoff.ms": "3600000"}
CLEANER_ON = {"log.cleaner.backoff.ms": "100"}

Written = dict[int, tuple[bytes, bytes]]


def produce_big(bootstrap: str, topic: str) -> Written:
    """BIG_VERSIONS values of BIG_KEYS keys in lz4 batches; returns what went to each offset."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.size": 64 * 1024,  # a produce blob must fit in a segment
            "queue.buffering.max.messages": 100_000,
        }
    )
    written: Written = {}
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            written[msg.offset()] = (msg.key(), msg.value())

    for version in range(BIG_VERSIONS):
        for k in range(BIG_KEYS):
            value = b"v%03d:" % version + os.urandom(40).hex().encode()
            producer.produce(topic, key=b"key-%05d" % k, value=value, on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    assert sorted(written) == list(range(BIG_KEYS * BIG_VERSIONS))
    return written


def consume_everything(bootstrap: str, topic: str, last_offset: int) -> list[Message]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages: list[Message] = []
    deadline = time.monotonic() + 30
    while (not messages or messages[-1].offset() < last_offset) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.2):
            assert msg.error() is None, msg.error()
            messages.append(msg)
    consumer.close()
    return messages


def check_intact(bootstrap: str, topic: str, written: Written) -> int:
    """Every record is one that was written at that offset, once, and each key's newest is there."""
    leo = len(written)
    messages = consume_everything(bootstrap, topic, leo - 1)
    offsets = [m.offset() for m in messages]
    assert offsets == sorted(set(offsets)), "a record is stored twice or out of order"
    assert offsets[-1] == leo - 1
    for m in messages:
        assert (m.key(), m.value()) == written[m.offset()], f"offset {m.offset()} changed"
    newest = {key: offset for offset, (key, _) in sorted(written.items())}
    present = set(offsets)
    missing = [offset for offset in newest.values() if offset not in present]
    assert not missing, f"{len(missing)} latest values lost, e.g. at offset {missing[0]}"
    return len(messages)


def kill_when(broker: BrokerProcess, directory: Path, seen: Callable[[set[str]], bool]) -> set[str]:
    """SIGKILL the broker as soon as the partition directory's file names satisfy `seen`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            names = set(os.listdir(directory))
        except FileNotFoundError:
            names = set()
        if seen(names):
            broker.kill()
            return names
        assert broker.exited() is None, "the broker died"
        # A tight 1 ms poll, not wait_until (whose pause grows to 0.25 s): the kill must
        # land inside the cleaner's short window.
        time.sleep(0.001)
    broker.kill()
    raise AssertionError("the cleaner never got there")


def test_sigkill_while_the_broker_cleans(tmp_path: Path) -> None:
    data = tmp_path / "data"
    directory = data / "big-0"
    broker = BrokerProcess(data, config=CLEANER_OFF)
    bootstrap = broker.start()
    try:
        create_topic(bootstrap, "big", config=BIG_TOPIC_CONFIG)
        written = produce_big(bootstrap, "big")
    finally:
        broker.stop()
    assert not (directory / cleaner_mod.STATE_FILE).exists()

    # 1. Killed while the cleaner thread writes its .cleaned segments (or, on a machine
    #    too busy for us to see them, as soon as the pass is over).
    broker = BrokerProcess(data, config=CLEANER_ON, port=broker.port)
    broker.start()
    kill_when(
        broker,
        directory,
        lambda n: cleaner_mod.STATE_FILE in n or any(x.endswith(".cleaned") for x in n),
    )

    # 2. Restarted (recovering from 1), then killed during the swap if we catch it, else
    #    right after the pass committed, before any checkpoint of the new segments.
    broker = BrokerProcess(data, config=CLEANER_ON, port=broker.port)
    broker.start()
    kill_when(
        broker,
        directory,
        lambda n: cleaner_mod.STATE_FILE in n or any(x.endswith(".swap") for x in n),
    )
    broker = BrokerProcess(data, config=CLEANER_OFF, port=broker.port)
    bootstrap = broker.start()
    try:
        check_intact(bootstrap, "big", written)
    finally:
        broker.kill()
    assert not any(x.endswith((".cleaned", ".swap")) for x in os.listdir(directory))

    # 3. Left alone, the cleaner finishes the job.
    broker = BrokerProcess(data, config=CLEANER_ON, port=broker.port)
    bootstrap = broker.start()
    try:
        wait_for(lambda: (directory / cleaner_mod.STATE_FILE).exists(), 30, "a cleaner pass")
        remaining = check_intact(bootstrap, "big", written)
        assert remaining < len(written) // 2
    finally:
        broker.stop()


# --- __consumer_offsets ---------------------------------------------------------------------


def offset_records(directory: Path) -> list[tuple[list, bytes | None]]:
    """(key, value) of every record in a partition directory, read from the files."""
    out = []
    for path in sorted(directory.glob("*.log")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # replaced by the cleaner meanwhile
            return offset_records(directory)
        for pos, header in iter_batches(data):
            for record in decode_records(data[pos : pos + header.size]):
                out.append((json.loads(record.key), record.value))
    return out


def test_consumer_offsets_are_compacted_and_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # log.roll.ms rolls every idle segment (__consumer_offsets ones too), so the
    # cleaner gets to clean them long before 100 MiB segments would fill up.
    config = {**CLEANER_ON, "log.roll.ms": "300", "log.retention.check.interval.ms": "100"}
    broker = BrokerProcess(data, config=config)
    bootstrap = broker.start()
    group = "compacted-group"
    directory = data / f"{OFFSETS_TOPIC}-{partition_for(group, 50)}"
    commits = 300
    try:
        create_topic(bootstrap, "orders", partitions=2)
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        for i in range(1, commits + 1):
            consumer.commit(
                offsets=[TopicPartition("orders", 0, i), TopicPartition("orders", 1, 10 * i)],
                asynchronous=False,
            )
        consumer.close()
        assert len(list(data.glob(f"{OFFSETS_TOPIC}-*"))) == 50  # as Kafka creates it

        def compacted() -> bool:
            keys = [key for key, _ in offset_records(directory) if key[0] == "o"]
            return len(keys) == 2 and (directory / cleaner_mod.STATE_FILE).exists()

        wait_for(compacted, 30, f"{directory.name} to be compacted")
    finally:
        broker.kill()

    broker = BrokerProcess(data, config=CLEANER_OFF, port=broker.port)
    bootstrap = broker.start()
    try:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        got = consumer.committed(
            [TopicPartition("orders", 0), TopicPartition("orders", 1)], timeout=10
        )
        consumer.close()
        assert [(tp.partition, tp.offset) for tp in got] == [(0, commits), (1, 10 * commits)]
    finally:
        broker.stop()
