"""``dlq list``, ``dlq inspect`` and ``dlq purge`` as library calls (no click)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from kops.admin import is_internal_topic, offsets_for_time, watermarks
from kops.client import AdminSession, ClientSettings, UnknownTopic
from kops.consume import StartAt, consume
from kops.recipes.dlq.records import (
    EXCEPTION_HEADERS,
    REPLAYED_SUFFIX,
    SCAN_CONFIG,
    DeadLetter,
    looks_like_dlq,
    read_dead_letters,
    replay_state_topic,
)

# --------------------------------------------------------------------------- list


@dataclass
class DlqTopic:
    name: str
    partitions: int
    records: int
    #: "name" (by its suffix) or "headers" (its newest record carries dead-letter headers).
    detected_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.name,
            "partitions": self.partitions,
            "records": self.records,
            "detected_by": self.detected_by,
        }


def _newest_headers(
    settings: ClientSettings, ends: dict[tuple[str, int], int], timeout: float
) -> dict[str, list]:
    """The headers of the newest record of each non-empty partition, per topic."""
    tps = [TopicPartition(t, p, end - 1) for (t, p), end in ends.items() if end > 0]
    out: dict[str, list] = {}
    if not tps:
        return out
    consumer = Consumer(settings.consumer_config(f"kops-dlq-scan-{uuid.uuid4().hex[:8]}"))
    try:
        consumer.assign(tps)
        waiting = {(tp.topic, tp.partition) for tp in tps}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if (msg.topic(), msg.partition()) in waiting:
                waiting.discard((msg.topic(), msg.partition()))
                out.setdefault(msg.topic(), []).extend(msg.headers() or [])
    finally:
        consumer.close()
    return out


def list_dlq_topics(
    target: ClientSettings | str, *, scan_headers: bool = True, scan_timeout: float = 3.0
) -> list[DlqTopic]:
    """Dead-letter topics: by name, and (``scan_headers``) any topic whose newest record
    carries kops, Spring or Connect dead-letter headers. Counts are log end - log start."""
    settings = ClientSettings.of(target)
    with AdminSession(settings) as admin:
        md = admin.metadata()
        names = {
            name: len(t.partitions)
            for name, t in md.topics.items()
            if not is_internal_topic(name) and not name.endswith(REPLAYED_SUFFIX)
        }
        starts, ends = watermarks(admin, [(n, p) for n in names for p in md.topics[n].partitions])
    by_name = {n for n in names if looks_like_dlq(n)}
    by_headers: set[str] = set()
    if scan_headers:
        others = {k: v for k, v in ends.items() if k[0] not in by_name}
        for topic, hs in _newest_headers(settings, others, scan_timeout).items():
            if any(k in EXCEPTION_HEADERS for k, _ in hs):
                by_headers.add(topic)
    out = []
    for name in sorted(by_name | by_headers):
        count = sum(ends.get((name, p), 0) - starts.get((name, p), 0) for p in range(names[name]))
        out.append(DlqTopic(name, names[name], count, "name" if name in by_name else "headers"))
    return out


# --------------------------------------------------------------------------- replay state


def load_markers(
    settings: ClientSettings, dlq_topic: str, *, config: dict[str, Any] | None = None
) -> dict[str, str]:
    """marker key -> state ("started" or "done"); empty when nothing was replayed yet.
    ``config``: extra consumer properties (``isolation.level``)."""
    state: dict[str, str] = {}
    try:
        for rec in consume(
            settings,
            replay_state_topic(dlq_topic),
            start=StartAt.beginning(),
            stop_at_end=True,
            config={**SCAN_CONFIG, **(config or {})},
        ):
            if rec.key is None:
                continue
            key = rec.key.decode("utf-8", "replace")
            if rec.value is None:
                state.pop(key, None)
                continue
            try:
                state[key] = json.loads(rec.value).get("state", "done")
            except (ValueError, AttributeError):
                state[key] = "done"
    except UnknownTopic:
        pass
    return state


def ensure_state_topic(admin: AdminSession, dlq_topic: str) -> None:
    """Create the compacted ``<dlq>.replayed`` marker topic when missing."""
    name = replay_state_topic(dlq_topic)
    admin.ensure_topics([NewTopic(name, num_partitions=1, config={"cleanup.policy": "compact"})])


# --------------------------------------------------------------------------- inspect


@dataclass
class ExceptionSummary:
    exception_class: str
    count: int = 0
    first_failed_ms: int | None = None
    last_failed_ms: int | None = None
    original_topics: Counter = field(default_factory=Counter)
    groups: Counter = field(default_factory=Counter)
    samples: list[DeadLetter] = field(default_factory=list)

    def add(self, dl: DeadLetter, max_samples: int) -> None:
        self.count += 1
        t = dl.failed_ms
        if t is not None:
            self.first_failed_ms = (
                t if self.first_failed_ms is None else min(self.first_failed_ms, t)
            )
            self.last_failed_ms = t if self.last_failed_ms is None else max(self.last_failed_ms, t)
        self.original_topics[dl.original_topic or "?"] += 1
        if dl.group:
            self.groups[dl.group] += 1
        if len(self.samples) < max_samples:
            self.samples.append(dl)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exception_class": self.exception_class,
            "count": self.count,
            "first_failed_at": self.first_failed_ms,
            "last_failed_at": self.last_failed_ms,
            "original_topics": dict(self.original_topics),
            "groups": dict(self.groups),
            "samples": [s.to_dict() for s in self.samples],
        }


@dataclass
class InspectReport:
    topic: str
    total: int
    replayed: int
    formats: Counter
    exceptions: list[ExceptionSummary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "records": self.total,
            "replayed": self.replayed,
            "formats": dict(self.formats),
            "exceptions": [e.to_dict() for e in self.exceptions],
        }


def inspect(target: ClientSettings | str, topic: str, *, samples: int = 3) -> InspectReport:
    """Read a whole DLQ and group its records by exception class (most frequent first)."""
    settings = ClientSettings.of(target)
    groups: dict[str, ExceptionSummary] = {}
    formats: Counter = Counter()
    total = 0
    for dl in read_dead_letters(settings, topic):
        total += 1
        formats[dl.format] += 1
        name = dl.exception_class or "(unknown)"
        groups.setdefault(name, ExceptionSummary(name)).add(dl, samples)
    markers = load_markers(settings, topic)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.exception_class))
    replayed = sum(1 for s in markers.values() if s == "done")
    return InspectReport(topic, total, replayed, formats, ordered)


# --------------------------------------------------------------------------- purge


@dataclass
class PurgeResult:
    partition: int
    start_before: int
    start_after: int
    end: int

    @property
    def deleted(self) -> int:
        return self.start_after - self.start_before


def _exact_cuts(
    settings: ClientSettings,
    topic: str,
    cut: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
    before_ms: int,
) -> dict[tuple[str, int], int]:
    """Move each cut forward to the first record at or after ``before_ms``.

    Some brokers answer a time lookup with the first offset of the *batch* holding that
    record, which would keep older records of the batch; reading from there costs one fetch
    and is a no-op where the answer is already exact (Kafka).
    """
    todo = {tp: off for tp, off in cut.items() if off < ends[tp]}
    if not todo:
        return cut
    out = dict(cut)
    consumer = Consumer(settings.consumer_config(f"kops-dlq-purge-{uuid.uuid4().hex[:8]}"))
    try:
        consumer.assign([TopicPartition(t, p, off) for (t, p), off in todo.items()])
        deadline = time.monotonic() + settings.timeout
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            tp = (msg.topic(), msg.partition())
            if tp not in todo:
                continue
            if msg.timestamp()[1] >= before_ms or msg.offset() + 1 >= ends[tp]:
                out[tp] = msg.offset() if msg.timestamp()[1] >= before_ms else ends[tp]
                del todo[tp]
                consumer.incremental_unassign([TopicPartition(*tp)])
    finally:
        consumer.close()
    return out


def purge(
    target: ClientSettings | str,
    topic: str,
    *,
    before_ms: int | None = None,
    dry_run: bool = False,
) -> list[PurgeResult]:
    """Delete dead letters with DeleteRecords: all of them (``before_ms=None``), or those
    older than ``before_ms`` (everything before the first record at or after it).

    ``dry_run``: delete nothing; ``start_after`` is where each log start would move."""
    settings = ClientSettings.of(target)
    with AdminSession(settings) as admin:
        md = admin.metadata(topic)
        tps = [TopicPartition(topic, p) for p in sorted(md.topics[topic].partitions)]
        keys = [(topic, tp.partition) for tp in tps]
        starts, ends = watermarks(admin, keys)
        cut = dict(ends)
        if before_ms is not None:
            for key, off in offsets_for_time(admin, keys, before_ms).items():
                # None: no record at or after the time, so every record is older.
                if off is not None:
                    cut[key] = off
            cut = _exact_cuts(settings, topic, cut, ends, before_ms)
        todo = [
            TopicPartition(topic, p, cut[(topic, p)])
            for (_, p) in sorted(cut)
            if cut[(topic, p)] > starts[(topic, p)]
        ]
        after = dict(starts)
        if dry_run:
            after.update({(topic, tp.partition): tp.offset for tp in todo})
        elif todo:
            futures = admin.client.delete_records(
                todo, request_timeout=admin.request_timeout, operation_timeout=admin.request_timeout
            )
            for tp, fut in futures.items():
                res = admin.wait(fut, "delete records", topic)
                after[(topic, tp.partition)] = res.low_watermark
    return [
        PurgeResult(tp.partition, starts[(topic, tp.partition)], after[(topic, tp.partition)],
                    ends[(topic, tp.partition)])
        for tp in tps
    ]  # fmt: skip
