"""The cancel view: which delayed records must never be delivered.

Cancels live in a compacted topic (``kops.delay.cancel``) keyed by message id; a tombstone
un-cancels. Every forwarder process reads it from the beginning at start and keeps following
it. Before delivering anything, a forwarder calls :meth:`CancelView.ensure_synced` with the
latest due time in its batch: it reads the topic's end offsets and waits until the view has
caught up with them, so a cancel acknowledged before a record's due time always wins.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from kops.client import ClientSettings, ErrorWatch
from kops.recipes.delay.tiers import CANCEL_TOPIC

__all__ = ["CancelView"]

log = logging.getLogger("kops.delay")


def _now_ms() -> int:
    return int(time.time() * 1000)


class CancelView:
    """The set of cancelled message ids, read from the compacted cancel topic and followed.

    :meth:`ensure_synced` is the barrier forwarders use before a delivery: it returns once
    every cancel acknowledged before ``at_ms`` has been read.
    """

    def __init__(self, settings: ClientSettings, topic: str = CANCEL_TOPIC):
        self.settings = settings
        self.topic = topic
        self._ids: set[str] = set()
        self._positions: dict[int, int] = {}
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()
        self._synced_at_ms = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        conf = settings.consumer_config(
            f"kops.delay.cancel-view.{uuid.uuid4().hex[:12]}",
            ErrorWatch(settings.bootstrap, log=log, what="cancel topic"),
            **{"enable.partition.eof": False, "fetch.wait.max.ms": 100},
        )
        self._consumer = Consumer(conf)
        # A second handle only for watermark queries, so they never contend with poll().
        self._offsets = Consumer(dict(conf, **{"group.id": conf["group.id"] + ".wm"}))
        self._partitions: list[int] = []

    def start(self) -> None:
        md = self._offsets.list_topics(self.topic, timeout=self.settings.timeout)
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            raise RuntimeError(f"cancel topic {self.topic!r} does not exist")
        self._partitions = sorted(tmd.partitions)
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        self._thread = threading.Thread(target=self._follow, name="kops-delay-cancels", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._consumer.poll(0.2)
                msgs = [] if first is None else [first, *self._consumer.consume(500, 0)]
            except KafkaException as exc:  # pragma: no cover - transient client trouble
                log.warning("cancel topic: %s", exc)
                time.sleep(0.5)
                continue
            if not msgs:
                continue
            with self._cond:
                for m in msgs:
                    if m.error() is not None:
                        continue
                    key = m.key()
                    if key:
                        ident = key.decode("utf-8", "replace")
                        # A tombstone un-cancels (and lets compaction drop the id).
                        if m.value() is None:
                            self._ids.discard(ident)
                        else:
                            self._ids.add(ident)
                    self._positions[m.partition()] = m.offset() + 1
                self._cond.notify_all()

    def is_cancelled(self, message_id: str | None) -> bool:
        return message_id is not None and message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ensure_synced(self, at_ms: int, timeout: float = 5.0) -> bool:
        """True once every cancel written before ``at_ms`` is in the view."""
        if self._synced_at_ms >= at_ms:
            return True
        with self._sync_lock:  # one watermark query serves every tier waiting on it
            if self._synced_at_ms >= at_ms:
                return True
            started = _now_ms()
            try:
                ends = {
                    p: self._offsets.get_watermark_offsets(
                        TopicPartition(self.topic, p), timeout=timeout, cached=False
                    )[1]
                    for p in self._partitions
                }
            except KafkaException as exc:
                log.warning("cancel topic: cannot read end offsets: %s", exc)
                return False
            deadline = time.monotonic() + timeout
            with self._cond:
                while any(self._positions.get(p, 0) < end for p, end in ends.items()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            self._synced_at_ms = started
            return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._consumer.close()
        self._offsets.close()
