"""Helpers shared by the group coordinator tests: polled confluent-kafka group members,
a consumer in a child process (to kill it without a LeaveGroup), and a raw
Kafka-protocol client built on kio for requests no client library sends."""

from __future__ import annotations

import itertools
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException
from kio.serial import entity_reader

from kops.protocol.messages import encode_request, response_type
from kops.testing import wait_until as _wait_until

FAST = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def wait_until(
    predicate: Callable[[], object], timeout: float = 20, what: str = "condition"
) -> object:
    """:func:`kops.testing.wait_until` with these tests' defaults (20 s) and ``what``."""
    return _wait_until(predicate, timeout, message=what)


class GroupMember:
    """A subscribed confluent-kafka consumer polled by its own thread.

    Records every delivered message and every assign/revoke callback; with
    `sync_commit` it commits each message synchronously before the next poll.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str],
        *,
        sync_commit: bool = False,
        **settings: Any,
    ) -> None:
        config = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            **FAST,
            **settings,
        }
        self.consumer = Consumer(config)
        self.sync_commit = sync_commit
        self.messages: list[tuple[int, int, bytes | None]] = []
        self.assigned: list[list[int]] = []
        self.revoked: list[list[int]] = []
        self.commit_errors: list[str] = []
        self.cooperative = "cooperative" in str(settings.get("partition.assignment.strategy", ""))
        self._owned: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        with self._lock:
            self.assigned.append(sorted(p.partition for p in partitions))
            # Eager assignments are whole; cooperative ones are increments.
            self._owned = (
                self._owned | {p.partition for p in partitions}
                if self.cooperative
                else {p.partition for p in partitions}
            )

    def _on_revoke(self, consumer: Consumer, partitions: list) -> None:
        with self._lock:
            self.revoked.append(sorted(p.partition for p in partitions))
            self._owned = self._owned - {p.partition for p in partitions}

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            with self._lock:
                self.messages.append((msg.partition(), msg.offset(), msg.value()))
            if self.sync_commit:
                try:
                    self.consumer.commit(message=msg, asynchronous=False)
                except KafkaException as exc:
                    self.commit_errors.append(str(exc))

    def partitions(self) -> set[int]:
        """The partitions currently owned, as the rebalance callbacks reported them.

        (Calling consumer.assignment() from another thread than the one polling
        can deadlock confluent-kafka, so the callbacks are the source of truth.)
        """
        with self._lock:
            return set(self._owned)

    def stop_polling(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def close(self) -> None:
        """Stop polling and close (revokes and sends LeaveGroup unless static)."""
        self.stop_polling()
        self.consumer.close()


def close_all(members: list[GroupMember]) -> None:
    """Stop every member polling before any leaves, so the rebalances the
    leaving causes cannot deliver (uncommitted) records a second time."""
    for member in members:
        member.stop_polling()
    for member in members:
        member.consumer.close()


_CHILD = textwrap.dedent(
    """
    import sys
    from confluent_kafka import Consumer
    bootstrap, group, topic, session_ms = sys.argv[1:5]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "session.timeout.ms": int(session_ms), "heartbeat.interval.ms": 300,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    def on_assign(c, partitions):
        print("assigned", ",".join(str(p.partition) for p in partitions), flush=True)
    consumer.subscribe([topic], on_assign=on_assign)
    while True:
        consumer.poll(0.1)
    """
)


class ChildConsumer:
    """A group consumer in a child process, so the test can SIGKILL it."""

    def __init__(self, bootstrap: str, group: str, topic: str, session_ms: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, bootstrap, group, topic, str(session_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.assignments: list[list[int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("assigned"):
                parts = line.split()[1] if len(line.split()) > 1 else ""
                self.assignments.append([int(p) for p in parts.split(",") if p])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


class RawClient:
    """One connection speaking the Kafka protocol through kio, for hand-made requests."""

    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self._ids = itertools.count(1)

    def send(self, body: Any) -> Any:
        correlation = next(self._ids)
        self.sock.sendall(encode_request(correlation, body, client_id="raw-test"))
        (size,) = struct.unpack(">i", self._read(4))
        frame = self._read(size)
        (got,) = struct.unpack_from(">i", frame, 0)
        assert got == correlation
        cls = response_type(type(body).__api_key__, type(body).__version__)
        offset = 4 + (1 if cls.__flexible__ else 0)  # response header v1 has empty tagged fields
        response, _ = entity_reader(cls)(frame, offset)
        return response

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def send_once(bootstrap: str, body: Any) -> Any:
    """One hand-made request on a connection of its own; returns the decoded response."""
    client = RawClient(bootstrap)
    try:
        return client.send(body)
    finally:
        client.close()


def new_group() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"
