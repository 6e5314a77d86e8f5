"""Check the Kafka answers kops's recipes rely on, against any engine.

    python examples/engine_probe.py --bootstrap HOST:PORT [--json]

Each check makes its own topic and group, speaks only the Kafka protocol
(confluent-kafka and kops's admin helpers), and prints what the engine answered next
to what Kafka answers. Exit 0 when every check agrees, 1 otherwise. These are the
answers whose absence made recipe tests fail on tansu 0.6.0 (see the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kops import admin
from kops.client import ClientSettings
from kops.errors import KopsError
from kops.testing import wait_until

RECORDS = 10
TIMEOUT = 10.0


@dataclass
class Check:
    name: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


class Probe:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"probe-{uuid.uuid4().hex[:8]}"
        self.base_ms = int(time.time() * 1000) - 60_000
        self.admin: AdminClient | None = None

    def _consumer(self, group: str | None = None) -> Consumer:
        group = group or f"probe-{uuid.uuid4().hex[:8]}"
        return Consumer(ClientSettings(self.bootstrap).consumer_config(group))

    def _admin(self) -> AdminClient:
        # Kept: a dropped AdminClient never resolves its futures.
        if self.admin is None:
            self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self.admin

    def setup(self) -> None:
        """One partition, RECORDS records a second apart, in a single batch."""
        admin.create_topic(self.bootstrap, self.topic, 1)
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 100})
        for i in range(RECORDS):
            producer.produce(self.topic, b"v%d" % i, partition=0, timestamp=self.base_ms + i * 1000)
        if producer.flush(TIMEOUT):
            raise SystemExit(f"engine_probe: records not delivered to {self.bootstrap}")

    def high_watermark(self) -> Check:
        consumer = self._consumer()
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, 0), TIMEOUT)
        finally:
            consumer.close()
        return Check("ListOffsets latest after one batch", str(RECORDS), str(high))

    def offset_for_time(self) -> Check:
        consumer = self._consumer()
        try:
            # One partition per request: librdkafka merges duplicates of a partition.
            found = [
                consumer.offsets_for_times([TopicPartition(self.topic, 0, ms)], TIMEOUT)[0]
                for ms in (self.base_ms + 4500, self.base_ms + 3_600_000)  # 5; past the end
            ]
        finally:
            consumer.close()
        # Past every record Kafka answers -1 (librdkafka shows it as OFFSET_END, -1).
        return Check("ListOffsets by timestamp", "5,-1", ",".join(str(tp.offset) for tp in found))

    def commit_metadata(self) -> Check:
        consumer = self._consumer()
        try:
            tp = TopicPartition(self.topic, 0, 3, metadata="kops-probe")
            consumer.commit(offsets=[tp], asynchronous=False)
            (back,) = consumer.committed([TopicPartition(self.topic, 0)], TIMEOUT)
        finally:
            consumer.close()
        return Check(
            "OffsetCommit metadata read back", "3 kops-probe", f"{back.offset} {back.metadata}"
        )

    def group_members(self) -> Check:
        group = f"probe-{uuid.uuid4().hex[:8]}"
        consumer = self._consumer(group)
        consumer.subscribe([self.topic])
        try:
            wait_until(
                lambda: consumer.poll(0.2) is not None or bool(consumer.assignment()),
                60, message="an assignment",
            )  # fmt: skip
            future = self._admin().describe_consumer_groups([group])[group]
            members = str(len(future.result(TIMEOUT).members))
        except Exception as exc:  # the engine's answer is the finding
            members = f"error: {(str(exc) or type(exc).__name__).splitlines()[0]}"
        finally:
            consumer.close()
        return Check("DescribeGroups members of a live group", "1", members)

    def delete_records(self) -> Check:
        try:
            (future,) = self._admin().delete_records([TopicPartition(self.topic, 0, 2)]).values()
            got = str(future.result(TIMEOUT).low_watermark)
        except Exception as exc:  # the engine's answer is the finding
            got = f"error: {(str(exc) or type(exc).__name__).splitlines()[0]}"
        return Check("DeleteRecords low watermark", "2", got)


def run(bootstrap: str) -> list[Check]:
    probe = Probe(bootstrap)
    probe.setup()
    checks: list[Callable[[], Check]] = [
        probe.high_watermark,
        probe.offset_for_time,
        probe.commit_metadata,
        probe.group_members,
        probe.delete_records,  # last: an engine may drop the connection
    ]
    return [check() for check in checks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        results = run(args.bootstrap)
    except KopsError as exc:
        print(f"engine_probe: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{**vars(c), "ok": c.ok} for c in results]))
    else:
        for c in results:
            mark = "ok  " if c.ok else "DIFF"
            print(f"{mark} {c.name}: Kafka {c.expected!r}, engine {c.got!r}")
    return 0 if all(c.ok for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
