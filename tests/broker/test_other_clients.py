"""kafka-python, aiokafka and kcat against the bundled broker."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from tests.broker.clients import consume_all, create_topic, produce


@pytest.mark.parametrize("codec", [None, "gzip", "lz4", "zstd"])
def test_kafka_python_round_trip(kafka_broker: str, topic_name: str, codec: str | None) -> None:
    kafka = pytest.importorskip("kafka")
    create_topic(kafka_broker, topic_name, partitions=2)
    producer = kafka.KafkaProducer(
        bootstrap_servers=kafka_broker, acks="all", compression_type=codec
    )
    futures = [
        producer.send(
            topic_name,
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            headers=[("n", str(i).encode())],
        )
        for i in range(200)
    ]
    producer.flush(30)
    metadata = [f.get(10) for f in futures]
    assert {m.partition for m in metadata} <= {0, 1}
    producer.close()

    consumer = kafka.KafkaConsumer(
        topic_name,
        bootstrap_servers=kafka_broker,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    seen = {}
    for msg in consumer:
        seen[msg.key] = (msg.value, dict(msg.headers))
        if len(seen) == 200:
            break
    consumer.close()
    assert len(seen) == 200
    assert seen[b"k7"] == (b"v7", {"n": b"7"})


def test_kafka_python_reads_confluent_records(kafka_broker: str, topic_name: str) -> None:
    kafka = pytest.importorskip("kafka")
    create_topic(kafka_broker, topic_name)
    produce(
        kafka_broker, topic_name, [(b"a", b"1"), (b"b", b"2")], **{"compression.type": "snappy"}
    )
    consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_broker, enable_auto_commit=False)
    tp = kafka.TopicPartition(topic_name, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    batches = consumer.poll(timeout_ms=5000)
    values = [r.value for records in batches.values() for r in records]
    consumer.close()
    assert values == [b"1", b"2"]


def test_aiokafka_round_trip(kafka_broker: str, topic_name: str) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    create_topic(kafka_broker, topic_name, partitions=2)

    async def run() -> list:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=kafka_broker, compression_type="gzip"
        )
        await producer.start()
        try:
            for i in range(100):
                await producer.send(
                    topic_name, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"x")]
                )
            await producer.flush()
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=kafka_broker,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got = []
        try:
            while len(got) < 100:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 10)
                for records in batch.values():
                    got.extend(records)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(m.value for m in got) == sorted(f"v{i}".encode() for i in range(100))
    assert all(m.headers == (("h", b"x"),) for m in got)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by .ci/run")
def test_kcat_metadata_produce_consume(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name)
    listing = subprocess.run(
        ["kcat", "-b", kafka_broker, "-L"], capture_output=True, text=True, timeout=30
    )
    assert listing.returncode == 0, listing.stderr
    assert topic_name in listing.stdout
    assert "1 brokers" in listing.stdout
    lines = "".join(f"key{i}:value{i}\n" for i in range(20))
    sent = subprocess.run(
        ["kcat", "-b", kafka_broker, "-P", "-t", topic_name, "-K:"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    got = subprocess.run(
        [
            "kcat",
            "-b",
            kafka_broker,
            "-C",
            "-t",
            topic_name,
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k=%s\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [f"key{i}=value{i}" for i in range(20)]
    assert len(consume_all(kafka_broker, topic_name, 20)) == 20


def test_kafka_python_describe_log_dirs_reports_segment_bytes(tmp_path) -> None:
    kafka = pytest.importorskip("kafka")
    from kops.testing import run_broker

    with run_broker(tmp_path) as bootstrap:
        create_topic(bootstrap, "sized", partitions=2)
        produce(bootstrap, "sized", [(None, b"x" * 100, None, i % 2) for i in range(20)])
        admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            response = admin.describe_log_dirs()
        finally:
            admin.close()
        sizes = {
            (topic["name"], part["partition_index"]): part["partition_size"]
            for broker in response
            for log_dir in broker["log_dirs"]
            for topic in log_dir["topics"]
            for part in topic["partitions"]
        }
        for index in range(2):
            on_disk = sum(p.stat().st_size for p in (tmp_path / f"sized-{index}").glob("*.log"))
            assert sizes[("sized", index)] == on_disk > 0
