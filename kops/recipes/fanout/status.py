"""Where a backlog fan-out stands: source backlog, records forwarded, drain group lag.

The fan-out's target topic and drain group are read from the source group's commit metadata
(written by :class:`~kops.recipes.fanout.forward.BacklogFanout`) unless given. With an
``interval``, two samples that far apart give rates and a drain ETA of L / (C - R): lag over
consume rate minus produce rate, when the drain is gaining.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions

from kops.admin import watermarks
from kops.client import AdminSession, ClientSettings, KopsClientError, UnknownTopic
from kops.recipes.fanout.report import parse_metadata
from kops.recipes.lag import GroupLag, LagMonitor
from kops.recipes.offsets import topic_partitions

__all__ = ["BacklogStatus", "Side", "backlog_status"]


@dataclass
class Side:
    """One group's view of one side of the fan-out (the source, or the drain on the target)."""

    group: str
    topics: list[str]
    lag: GroupLag | None
    #: Records per second the group's commits advanced (with an interval), and the rate the
    #: log ends grew at (new records arriving).
    consume_rate: float | None = None
    produce_rate: float | None = None
    #: Records in partitions of these topics the group has no commit on yet (whole
    #: partitions still to read; the lag rows only cover committed partitions).
    not_started: int = 0

    @property
    def total_lag(self) -> int | None:
        if self.lag is None:
            return self.not_started or None
        return self.lag.total_lag + self.not_started

    @property
    def eta_seconds(self) -> float | None:
        """L / (C - R): None when unknown or when the group is not gaining."""
        lag = self.total_lag
        if lag == 0:
            return 0.0
        if lag is None or self.consume_rate is None or self.produce_rate is None:
            return None
        gain = self.consume_rate - self.produce_rate
        return lag / gain if gain > 0 else None

    def to_dict(self) -> dict[str, Any]:
        eta = self.eta_seconds
        return {
            "group": self.group,
            "topics": self.topics,
            "state": None if self.lag is None else self.lag.state,
            "members": None if self.lag is None else self.lag.members,
            "status": None if self.lag is None else self.lag.status,
            "lag": self.total_lag,
            "not_started": self.not_started,
            "max_lag_seconds": None if self.lag is None else self.lag.max_lag_seconds,
            "consume_rate": _round(self.consume_rate),
            "produce_rate": _round(self.produce_rate),
            "eta_seconds": _round(eta),
            "partitions": [] if self.lag is None else [p.to_dict() for p in self.lag.partitions],
        }


@dataclass
class BacklogStatus:
    group: str
    source: Side
    target: str | None = None
    target_partitions: int | None = None
    #: Records in the target topic (end - start offsets): what the fan-out has forwarded,
    #: if the target was empty when it started.
    forwarded: int | None = None
    drain: Side | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fanout_progress(self) -> float | None:
        """forwarded / (forwarded + source backlog), 0..1."""
        backlog = self.source.total_lag
        if self.forwarded is None or backlog is None:
            return None
        total = self.forwarded + backlog
        return 1.0 if total == 0 else self.forwarded / total

    def to_dict(self) -> dict[str, Any]:
        progress = self.fanout_progress
        return {
            "group": self.group,
            "source": self.source.to_dict(),
            "fanout": {
                "target": self.target,
                "partitions": self.target_partitions,
                "forwarded": self.forwarded,
                "progress": None if progress is None else round(progress, 4),
            },
            "drain": None if self.drain is None else self.drain.to_dict(),
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fanout_metadata(session: AdminSession, group: str) -> dict[str, Any] | None:
    """The fan-out settings in the group's commit metadata (the newest one found)."""
    futures = session.client.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=session.request_timeout
    )
    result = session.wait(futures[group], "fetch committed offsets", group)
    for tp in result.topic_partitions or ():
        found = parse_metadata(getattr(tp, "metadata", None))
        if found is not None:
            return found
    return None


def _only(lag: GroupLag | None, keep: Callable[[str], bool]) -> GroupLag | None:
    if lag is None:
        return None
    rows = [p for p in lag.partitions if keep(p.topic)]
    return GroupLag(lag.group, lag.state, lag.members, rows)


def _sums(lag: GroupLag | None) -> tuple[int, int]:
    if lag is None:
        return 0, 0
    committed = sum(p.committed or 0 for p in lag.partitions)
    ends = sum(p.log_end or 0 for p in lag.partitions)
    return committed, ends


def backlog_status(
    settings: ClientSettings | str,
    group: str,
    *,
    target: str | None = None,
    drain_group: str | None = None,
    interval: float = 0.0,
) -> BacklogStatus:
    """Snapshot (or, with ``interval`` seconds, two samples) of a fan-out's three parts."""
    settings = ClientSettings.of(settings)
    notes: list[str] = []
    with AdminSession(settings) as session:
        meta = _fanout_metadata(session, group)
        if meta is None and target is None:
            notes.append(f"group {group!r} has no fan-out commits; pass --to to name the target")
        target = target or (meta or {}).get("to")
        drain_group = drain_group or (meta or {}).get("drain_group")
        partitions: int | None = None
        forwarded: int | None = None
        if target is not None:
            try:
                parts = topic_partitions(session, target)
            except UnknownTopic:
                notes.append(f"target topic {target!r} does not exist yet")
            else:
                partitions = len(parts)
                keys = [(target, p) for p in parts]
                starts, ends = watermarks(session, keys)
                forwarded = sum(ends[k] - starts[k] for k in keys)

    groups = [group]
    if drain_group:
        groups.append(drain_group)
    monitor = LagMonitor(settings, groups, window=2)
    try:
        try:
            monitor.sample()
        except KopsClientError as exc:
            if drain_group is None or exc.code != "GROUP_ID_NOT_FOUND":
                raise
            notes.append(f"drain group {drain_group!r} has no members or commits yet")
            drain_group = None
            monitor.close()
            monitor = LagMonitor(settings, [group], window=2)
            monitor.sample()
        first = {g.group: g for g in monitor.report(time_lag=False)} if interval > 0 else {}
        started = time.monotonic()
        if interval > 0:
            time.sleep(interval)
            monitor.sample()
        elapsed = time.monotonic() - started
        report = {g.group: g for g in monitor.report(time_lag=True)}
    finally:
        monitor.close()

    def side(name: str, keep: Callable[[str], bool]) -> Side:
        lag = _only(report.get(name), keep)
        out = Side(name, sorted({p.topic for p in lag.partitions}) if lag else [], lag)
        before = _only(first.get(name), keep)
        if before is not None and elapsed > 0:
            (c0, e0), (c1, e1) = _sums(before), _sums(lag)
            out.consume_rate = max(c1 - c0, 0) / elapsed
            out.produce_rate = max(e1 - e0, 0) / elapsed
        return out

    # The source side is every topic the group commits except the target (should the group
    # ever have read it); the drain side is the target only.
    source = side(group, lambda t: t != target)
    drain = side(drain_group, lambda t: t == target) if drain_group else None
    with AdminSession(settings) as session:
        _count_not_started(session, source, source.topics)
        if drain is not None and partitions is not None and target is not None:
            _count_not_started(session, drain, [target])
    return BacklogStatus(
        group=group,
        source=source,
        target=target,
        target_partitions=partitions,
        forwarded=forwarded,
        drain=drain,
        notes=notes,
    )


def _count_not_started(session: AdminSession, side: Side, topics: list[str]) -> None:
    """Fill ``side.not_started``: records of the partitions the group never committed."""
    seen = {(p.topic, p.partition) for p in side.lag.partitions} if side.lag else set()
    missing = [(t, p) for t in topics for p in topic_partitions(session, t) if (t, p) not in seen]
    if not missing:
        return
    starts, ends = watermarks(session, missing)
    side.not_started = sum(max(ends[k] - starts[k], 0) for k in missing)
    if side.not_started and not side.topics:
        side.topics = sorted(topics)
