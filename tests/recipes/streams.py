"""Streams of a test's own: recipe loops in threads, records fed at a steady pace, topics
read to their end as a test's readers see them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Self

from confluent_kafka import Producer

from kops import admin
from kops.client import AdminSession, UnknownTopic
from kops.consume import ConsumedRecord, StartAt, consume
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions


def read(bootstrap: str, topic: str, *, committed: bool = True) -> list[ConsumedRecord]:
    """Every record of ``topic``, start to end, as a read_committed (or read_uncommitted)
    reader sees it; none while it does not exist."""
    isolation = "read_committed" if committed else "read_uncommitted"
    config = {"isolation.level": isolation}
    try:
        return list(
            consume(bootstrap, topic, start=StartAt.beginning(), stop_at_end=True, config=config)
        )
    except UnknownTopic:  # the router creates its topics when it starts
        return []


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    with AdminSession(bootstrap) as session:
        parts = session.metadata(topic).topics[topic].partitions
        _starts, ends = admin.watermarks(session, [(topic, p) for p in parts])
    return {p: off for (_t, p), off in ends.items()}


class Background:
    """A loop of a test's own in a thread (``run``): started on enter; on exit stopped,
    joined, then ``finish()``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """After the thread has stopped."""

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{type(self).__name__} did not stop"
        self.finish()


class Feeder(Background):
    """Sends records at a steady pace (``send(i)`` the i-th) until stopped; on exit every
    record sent must be acknowledged."""

    def __init__(self, bootstrap: str, rate: float):
        super().__init__()
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self.rate = rate

    def send(self, i: int) -> None:
        raise NotImplementedError

    def run(self) -> None:
        i = 0
        while not self.stop.wait(1 / self.rate):
            self.send(i)
            self.producer.poll(0)
            i += 1

    def finish(self) -> None:
        assert self.producer.flush(30) == 0, "the feeder's records were not all acknowledged"


@contextlib.contextmanager
def forwarders_running(bootstrap: str, options: ForwarderOptions) -> Iterator[DelayForwarders]:
    """The delay forwarders in a thread, once every tier has its partitions."""
    forwarders = DelayForwarders(bootstrap, options)
    stop = threading.Event()
    thread = threading.Thread(target=forwarders.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert forwarders.wait_assigned(30), "forwarders did not join their group"
        yield forwarders
    finally:
        stop.set()
        thread.join(30)
