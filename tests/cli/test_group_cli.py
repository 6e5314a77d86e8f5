"""``kops group ...`` against the real broker with live confluent-kafka group members."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from kops import admin
from kops.produce import OutgoingRecord, produce_records
from tests.broker.groups.group_helpers import wait_until

Kops = Callable[..., subprocess.CompletedProcess[str]]

PARTITIONS = 4
#: Records produced to partition p: 3 + p (log end offsets 3, 4, 5, 6).
PRODUCED = {p: 3 + p for p in range(PARTITIONS)}
#: What the members commit; partition 3 is never committed.
COMMITS = {0: 1, 1: 4, 2: 2}


class Member:
    """A subscribed consumer polled by its own thread.

    confluent-kafka 2.16 serializes calls on one client handle, and a thread that polls in a
    loop starves calls made from other threads (a commit or assignment() from the test
    thread can wait forever), so every call runs in the polling thread through :meth:`call`.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, client_id: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": client_id,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
            }
        )
        self._calls: queue.Queue[tuple[Callable[[Consumer], Any], Future[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self.consumer.subscribe([topic])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                pass
            else:
                try:
                    future.set_result(fn(self.consumer))
                except Exception as exc:
                    future.set_exception(exc)
            self.consumer.poll(0.05)
        self.consumer.close()  # sends LeaveGroup

    def call(self, fn: Callable[[Consumer], Any]) -> Any:
        future: Future[Any] = Future()
        self._calls.put((fn, future))
        return future.result(15)

    def partitions(self) -> set[int]:
        return {tp.partition for tp in self.call(lambda c: c.assignment())}

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(15)


def _json(kops: Kops, *args: str) -> Any:
    result = kops(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _listed(kops: Kops) -> dict[str, dict]:
    return {g["group"]: g for g in _json(kops, "group", "list")}


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def group_id() -> str:
    return f"cli-g-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def members(kafka_broker: str, topic: str, group_id: str) -> Iterator[list[Member]]:
    """Two live members of ``group_id`` splitting a 4-partition topic, after committing
    :data:`COMMITS` (each member commits the partitions it owns)."""
    admin.create_topic(kafka_broker, topic, PARTITIONS)
    records = [
        OutgoingRecord(f"{p}-{i}".encode(), partition=p)
        for p, n in PRODUCED.items()
        for i in range(n)
    ]
    assert produce_records(kafka_broker, topic, records).ok
    pair = [Member(kafka_broker, group_id, topic, f"member-{n}") for n in "ab"]
    try:

        def split() -> bool:
            owned = [m.partitions() for m in pair]
            return all(owned) and sorted(p for o in owned for p in o) == list(range(PARTITIONS))

        wait_until(split, what="both members to get partitions")
        for m in pair:
            mine = [TopicPartition(topic, p, COMMITS[p]) for p in m.partitions() if p in COMMITS]
            if mine:
                m.call(lambda c, mine=mine: c.commit(offsets=mine, asynchronous=False))
        yield pair
    finally:
        for m in pair:
            m.close()


def test_list_describe_delete_live_group(
    kops: Kops, members: list[Member], topic: str, group_id: str
) -> None:
    entry = _listed(kops)[group_id]
    assert entry["state"] == "Stable"
    assert entry["members"] == 2
    assert entry["protocol_type"] == "consumer"
    assert entry["protocol"] == "range"  # librdkafka's default assignor list: range,roundrobin

    human = kops("group", "list")
    assert human.returncode == 0, human.stderr
    row = next(line.split() for line in human.stdout.splitlines() if line.startswith(group_id))
    assert row == [group_id, "Stable", "consumer", "range", "2"]
    stable = _json(kops, "group", "list", "--state", "stable")
    assert group_id in {g["group"] for g in stable}
    assert group_id not in {g["group"] for g in _json(kops, "group", "list", "--state", "Empty")}

    desc = _json(kops, "group", "describe", group_id)
    assert (desc["state"], len(desc["members"]), desc["protocol"]) == ("Stable", 2, "range")
    by_client = {m["client_id"]: m for m in desc["members"]}
    assert sorted(by_client) == ["member-a", "member-b"]
    assigned = [(a["topic"], a["partition"]) for m in desc["members"] for a in m["assignment"]]
    assert sorted(assigned) == [(topic, p) for p in range(PARTITIONS)]
    assert all(m["host"] for m in desc["members"])

    rows = {p["partition"]: p for p in desc["partitions"]}
    assert sorted(rows) == list(range(PARTITIONS))
    for p, row in rows.items():
        assert row["topic"] == topic
        assert row["log_end_offset"] == PRODUCED[p]
        assert row["committed_offset"] == COMMITS.get(p)
        assert row["lag"] == (PRODUCED[p] - COMMITS[p] if p in COMMITS else None)
        owner = by_client[row["client_id"]]
        assert {"topic": topic, "partition": p} in owner["assignment"]
        assert row["member_id"] == owner["member_id"]
    assert desc["total_lag"] == sum(PRODUCED[p] - c for p, c in COMMITS.items())

    human = kops("group", "describe", group_id)
    assert human.returncode == 0, human.stderr
    assert f"Group: {group_id}" in human.stdout
    assert "State: Stable" in human.stdout
    assert "Protocol: consumer/range" in human.stdout
    lines = [line.split() for line in human.stdout.splitlines()]
    assert sum(1 for cells in lines if cells[1:2] in (["member-a"], ["member-b"])) == 2
    part_rows = {int(c[1]): c[2:5] for c in lines if c[:1] == [topic]}
    assert part_rows == {
        0: ["1", "3", "2"],
        1: ["4", "4", "0"],
        2: ["2", "5", "3"],
        3: ["-", "6", "-"],
    }

    line = _one_error_line(kops("group", "delete", group_id))
    assert group_id in line and "active members" in line
    assert _listed(kops)[group_id]["members"] == 2

    for m in members:
        m.close()
    wait_until(lambda: _listed(kops)[group_id]["state"] == "Empty", what="the group to be Empty")
    empty = _json(kops, "group", "describe", group_id)
    assert (empty["state"], empty["members"]) == ("Empty", [])
    assert {p["partition"]: p["committed_offset"] for p in empty["partitions"]} == COMMITS
    assert all(p["member_id"] is None for p in empty["partitions"])

    deleted = kops("group", "delete", group_id)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted consumer group {group_id}" in deleted.stderr
    assert group_id not in _listed(kops)
    _one_error_line(kops("group", "describe", group_id))


def test_unknown_group(kops: Kops, group_id: str) -> None:
    # Kafka describes an unknown group as Dead; kops exits 1 with Kafka's tool's wording.
    line = _one_error_line(kops("group", "describe", group_id))
    assert line == f"error: consumer group '{group_id}' does not exist"
    line = _one_error_line(kops("group", "delete", group_id))
    assert line == f"error: consumer group '{group_id}' does not exist"


def test_delete_several_reports_each(
    kops: Kops, kafka_broker: str, topic: str, group_id: str
) -> None:
    """A group that only holds offsets (committed by a tool) is Empty and deletable; one
    unknown name among several still deletes the others and exits 1 with one line."""
    admin.create_topic(kafka_broker, topic, 1)
    consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": group_id})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        consumer.close()
    entry = _listed(kops)[group_id]
    assert (entry["state"], entry["members"], entry["protocol_type"]) == ("Empty", 0, "")

    missing = f"{group_id}-missing"
    result = kops("group", "delete", group_id, missing)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"deleted consumer group {group_id}",
        f"error: consumer group '{missing}' does not exist",
    ]
    assert group_id not in _listed(kops)
