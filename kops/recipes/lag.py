"""Consumer lag per group and partition, in records and in seconds, with a status.

Lag in records is log end - committed offset. Lag in seconds is the age of the oldest record
the group has not consumed: the record at the committed offset is fetched (without a
group) and its timestamp compared with now. That needs create times close to wall time;
producers that set their own timestamps make the figure meaningless.

Statuses, in the spirit of LinkedIn's Burrow (no thresholds: they are judged from several
samples of each partition over a window, oldest first; the first rule that holds wins):

- ``REWOUND``: the committed offset went down between two samples (an offset reset).
- ``OK``: the lag was 0 in at least one sample (the group caught up in the window).
- ``STOPPED``: the committed offset did not move, the lag is above 0, and no member of the
  group owns the partition: nothing is consuming it.
- ``STALLED``: the committed offset did not move, the lag is above 0, and a live member owns
  the partition: a consumer holds it but does not advance (stuck handler, poison record).
- ``GROWING``: the committed offset moved, but the lag never fell between two samples and
  ended higher than it started: the consumer is slower than the producers.
- ``OK`` otherwise (consuming and keeping up, or catching up).
- ``NO_COMMITS``: the group has committed nothing for the partition yet (shown as
  "no commits yet"; its lag counts from the log start, see :class:`PartitionLag`).
- ``UNKNOWN``: fewer than two samples and lag above 0 with an owner, or no log end known.

Unlike Burrow, which reads every commit, samples only see committed offsets, so the window
must be longer than the consumers' commit interval (librdkafka auto-commits every 5 s):
a healthy consumer that commits less often than the window looks STALLED.

Example::

    from kops.recipes.lag import measure_lag
    for group in measure_lag(bootstrap, ["billing"], samples=3, interval=2.0):
        for p in group.partitions:
            print(p.topic, p.partition, p.lag, p.lag_seconds, p.status)
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, TopicPartition
from confluent_kafka.admin import OffsetSpec

from kops.admin import list_offsets
from kops.client import AdminSession, ClientSettings, ErrorWatch, KopsClientError
from kops.recipes.offsets import (
    GroupInfo,
    TopicPartitionKey,
    committed_offsets,
    describe_group,
    list_group_ids,
)

__all__ = [
    "GroupLag",
    "LagMonitor",
    "LagSample",
    "PartitionLag",
    "TimestampReader",
    "evaluate_status",
    "measure_lag",
    "oldest_unconsumed_timestamps",
]

OK = "OK"
STALLED = "STALLED"
STOPPED = "STOPPED"
REWOUND = "REWOUND"
GROWING = "GROWING"
UNKNOWN = "UNKNOWN"
NO_COMMITS = "NO_COMMITS"

#: How each status reads for a person (the CLI's tables); JSON keeps the names.
STATUS_TEXT = {NO_COMMITS: "no commits yet"}


@dataclass(frozen=True)
class LagSample:
    committed: int | None
    log_end: int | None
    #: True when a live member of the group had the partition assigned.
    owned: bool

    @property
    def lag(self) -> int | None:
        if self.committed is None or self.log_end is None:
            return None
        return max(self.log_end - self.committed, 0)


def evaluate_status(samples: Sequence[LagSample]) -> str:
    """The status of one partition from its samples, oldest first (rules in the module doc)."""
    if samples and samples[-1].committed is None:
        return NO_COMMITS
    if not samples or samples[-1].lag is None:
        return UNKNOWN
    pairs = [(s.committed, s.lag) for s in samples if s.committed is not None and s.lag is not None]
    commits = [c for c, _ in pairs]
    lags = [lag for _, lag in pairs]
    if any(b < a for a, b in pairwise(commits)):
        return REWOUND
    if 0 in lags:
        return OK
    frozen = commits[0] == commits[-1]
    if not samples[-1].owned:
        return STOPPED if frozen else OK
    if len(pairs) < 2:
        return UNKNOWN
    if frozen:
        return STALLED
    if all(b >= a for a, b in pairwise(lags)) and lags[-1] > lags[0]:
        return GROWING
    return OK


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    log_end: int | None
    lag: int | None
    #: Age in seconds of the oldest unconsumed record (0 when caught up; None if unknown).
    lag_seconds: float | None
    status: str
    #: Client id of the member that owns the partition, if any.
    owner: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "committed_offset": self.committed,
            "log_end_offset": self.log_end,
            "lag": self.lag,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "status": self.status,
            "owner": self.owner,
        }


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    members: int
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def max_lag_seconds(self) -> float | None:
        values = [p.lag_seconds for p in self.partitions if p.lag_seconds is not None]
        return max(values) if values else None

    @property
    def status(self) -> str:
        """The worst partition status."""
        order = [REWOUND, STOPPED, STALLED, GROWING, UNKNOWN, NO_COMMITS, OK]
        found = {p.status for p in self.partitions}
        return next((s for s in order if s in found), OK)

    def to_dict(self) -> dict[str, Any]:
        worst = self.max_lag_seconds
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "status": self.status,
            "total_lag": self.total_lag,
            "max_lag_seconds": None if worst is None else round(worst, 3),
            "partitions": [p.to_dict() for p in self.partitions],
        }


class LagMonitor:
    """Samples groups repeatedly and keeps the last ``window`` samples per partition.

    Call :meth:`sample` on a schedule and :meth:`report` whenever a view is wanted; ``kops
    lag --watch`` does exactly that. ``groups=None`` follows every group on the cluster.
    """

    def __init__(
        self,
        target: ClientSettings | str,
        groups: Sequence[str] | None = None,
        *,
        topic: str | None = None,
        window: int = 3,
        skip_unknown: bool = False,
        reuse_reader: bool = False,
    ):
        """``skip_unknown``: a named group that does not exist (yet) is left out of the
        report instead of raising. ``reuse_reader``: one consumer reads the timestamps of
        every report (for a monitor sampled forever, e.g. the worker's lag exporter)."""
        if window < 1:
            raise ValueError("window must be at least 1 sample")
        self.settings = ClientSettings.of(target)
        self.groups = list(dict.fromkeys(groups)) if groups else None
        self.topic = topic
        self.window = window
        self.skip_unknown = skip_unknown
        self._reader = TimestampReader(self.settings) if reuse_reader else None
        self._admin = AdminSession(self.settings)
        self._history: dict[tuple[str, str, int], deque[LagSample]] = {}
        self._infos: dict[str, GroupInfo] = {}
        self._committed: dict[str, dict[TopicPartitionKey, int | None]] = {}

    def close(self) -> None:
        self._admin.close()
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> LagMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample(self) -> None:
        """Take one sample of every followed group (a few admin requests per group)."""
        admin = self._admin
        names = self.groups if self.groups is not None else list_group_ids(admin)
        infos: dict[str, GroupInfo] = {}
        committed: dict[str, dict[TopicPartitionKey, int | None]] = {}
        for g in names:
            info = describe_group(admin, g)
            offsets: dict[TopicPartitionKey, int | None] = dict(committed_offsets(admin, g))
            for member in info.members:
                for key in member.assignment:
                    offsets.setdefault(key, None)
            if self.topic is not None:
                offsets = {k: v for k, v in offsets.items() if k[0] == self.topic}
            if self.groups is not None and info.state == "DEAD" and not offsets:
                if self.skip_unknown:
                    continue
                raise KopsClientError(f"unknown consumer group {g!r}", code="GROUP_ID_NOT_FOUND")
            infos[g] = info
            committed[g] = offsets
        keys = {k for offsets in committed.values() for k in offsets}
        ends = list_offsets(admin, sorted(keys), OffsetSpec.latest())
        for g, offsets in committed.items():
            for key, off in offsets.items():
                history = self._history.setdefault((g, *key), deque(maxlen=self.window))
                history.append(LagSample(off, ends.get(key), infos[g].owner(key) is not None))
        self._infos, self._committed = infos, committed

    def report(self, *, time_lag: bool = True, now_ms: int | None = None) -> list[GroupLag]:
        """Lag and status of every partition seen in the latest sample, groups by name."""
        if not self._infos:
            self.sample()
        ages: dict[TopicPartitionKey, int] = {}
        if time_lag:
            wanted = {
                key: off
                for offsets in self._committed.values()
                for key, off in offsets.items()
                if off is not None
            }
            if self._reader is not None:
                ages = self._reader.read(wanted, self._ends_hint())
            else:
                ages = oldest_unconsumed_timestamps(self.settings, wanted, self._ends_hint())
        now = int(time.time() * 1000) if now_ms is None else now_ms
        out = []
        for g in sorted(self._infos):
            info = self._infos[g]
            rows = []
            for key in sorted(self._committed[g]):
                samples = list(self._history[(g, *key)])
                last = samples[-1]
                lag_seconds: float | None = None
                if last.lag == 0:
                    lag_seconds = 0.0
                elif last.lag is not None and key in ages:
                    lag_seconds = max(now - ages[key], 0) / 1000
                owner = info.owner(key)
                rows.append(
                    PartitionLag(
                        group=g,
                        topic=key[0],
                        partition=key[1],
                        committed=last.committed,
                        log_end=last.log_end,
                        lag=last.lag,
                        lag_seconds=lag_seconds,
                        status=evaluate_status(samples),
                        owner=None if owner is None else (owner.client_id or owner.member_id),
                    )
                )
            out.append(GroupLag(g, info.state, len(info.members), rows))
        return out

    def _ends_hint(self) -> dict[TopicPartitionKey, int]:
        out: dict[TopicPartitionKey, int] = {}
        for (_, t, p), history in self._history.items():
            end = history[-1].log_end
            if end is not None:
                out[(t, p)] = end
        return out


def measure_lag(
    target: ClientSettings | str,
    groups: Sequence[str] | None = None,
    *,
    topic: str | None = None,
    samples: int = 3,
    interval: float = 2.0,
    time_lag: bool = True,
    on_sample: Callable[[int], None] | None = None,
) -> list[GroupLag]:
    """Sample ``groups`` (default: all) ``samples`` times, ``interval`` seconds apart, and
    report lag and status. Raises :class:`kops.client.KopsClientError` for an unknown group
    named explicitly."""
    with LagMonitor(target, groups, topic=topic, window=samples) as monitor:
        for i in range(samples):
            if i:
                time.sleep(interval)
            monitor.sample()
            if on_sample is not None:
                on_sample(i + 1)
        return monitor.report(time_lag=time_lag)


def oldest_unconsumed_timestamps(
    target: ClientSettings | str,
    positions: Mapping[TopicPartitionKey, int],
    ends: Mapping[TopicPartitionKey, int] | None = None,
    *,
    timeout: float = 3.0,
) -> dict[TopicPartitionKey, int]:
    """Timestamp (epoch ms) of the record at each position, for positions before the end.

    Reads without a group (nothing is committed). Where the record at the position is gone
    (retention), the oldest retained record is used: it is the oldest one left to consume.
    Partitions that answer nothing within ``timeout`` are left out.
    """
    ends = ends or {}
    wanted = {k: off for k, off in positions.items() if ends.get(k) is None or off < ends[k]}
    if not wanted:
        return {}
    settings = ClientSettings.of(target)
    watch = ErrorWatch(settings.bootstrap)
    consumer = Consumer(
        settings.consumer_config(
            f"kops-lag-{uuid.uuid4().hex[:12]}",
            watch,
            **{"fetch.wait.max.ms": 100, "max.partition.fetch.bytes": 65536},
        )
    )
    found: dict[TopicPartitionKey, int] = {}
    try:
        consumer.assign([TopicPartition(t, p, off) for (t, p), off in wanted.items()])
        deadline = time.monotonic() + timeout
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                if msg.error() is not None:
                    continue
                key = (msg.topic(), msg.partition())
                if key in found or key not in wanted:
                    continue
                ts_type, ts = msg.timestamp()
                if ts_type != TIMESTAMP_NOT_AVAILABLE:
                    found[key] = ts
                # One record per partition is all we need.
                consumer.pause([TopicPartition(*key)])
            watch.check()
    finally:
        consumer.close()
    return found


class TimestampReader:
    """:func:`oldest_unconsumed_timestamps` with one consumer kept across calls: for a
    caller that asks every few seconds (the worker's lag exporter). Each call assigns the
    lagging partitions at their positions and takes one record from each. Not thread-safe."""

    def __init__(self, target: ClientSettings | str, *, timeout: float = 3.0):
        self.settings = ClientSettings.of(target)
        self.timeout = timeout
        self._watch = ErrorWatch(self.settings.bootstrap)
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                self.settings.consumer_config(
                    f"kops-lag-{uuid.uuid4().hex[:12]}",  # never joined, never committed
                    self._watch,
                    **{"fetch.wait.max.ms": 100, "max.partition.fetch.bytes": 65536},
                )
            )
        return self._consumer

    def read(
        self,
        positions: Mapping[TopicPartitionKey, int],
        ends: Mapping[TopicPartitionKey, int] | None = None,
    ) -> dict[TopicPartitionKey, int]:
        """Timestamp (epoch ms) of the record at each position before its end."""
        ends = ends or {}
        wanted = {k: off for k, off in positions.items() if ends.get(k) is None or off < ends[k]}
        if not wanted:
            return {}
        consumer = self._client()
        tps = [TopicPartition(t, p, off) for (t, p), off in wanted.items()]
        consumer.assign(tps)
        # librdkafka keeps a partition's paused flag across assignments: the last call
        # paused every partition it got a record from.
        consumer.resume(tps)
        found: dict[TopicPartitionKey, int] = {}
        deadline = time.monotonic() + self.timeout
        try:
            while len(found) < len(wanted) and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=len(wanted), timeout=0.2):
                    key = (msg.topic(), msg.partition())
                    if msg.error() is not None or key in found or key not in wanted:
                        continue
                    ts_type, ts = msg.timestamp()
                    if ts_type != TIMESTAMP_NOT_AVAILABLE:
                        found[key] = ts
                    consumer.pause([TopicPartition(*key)])  # one record is all we need
                self._watch.check()
        finally:
            consumer.unassign()
        return found

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
