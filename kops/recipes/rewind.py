"""Move a consumer group's committed offsets: to a time, an offset, a shift, either end, or
offsets saved in a file. The equivalent of ``kafka-consumer-groups --reset-offsets``.

A rewind is planned first (per partition: committed offset now, new offset, records that
will be read again or skipped) and only committed with ``execute=True``. Like Kafka's tool
it refuses to commit while the group has members: a live consumer would overwrite the new
offsets with its next commit. To move a *running* consumer, give it :class:`SeekToTime` as
its assignment callback instead.

Example::

    from kops.recipes.rewind import RewindTo, rewind, export_offsets
    plan = rewind(bootstrap, "billing", "orders", RewindTo.duration(3600))   # dry run
    export_offsets(plan, "before.csv")              # undo later with RewindTo.offsets(...)
    rewind(bootstrap, "billing", "orders", RewindTo.duration(3600), execute=True)

Semantics, as in Kafka: for a time, the new offset is the first record whose timestamp is at
or after it, and the log end when there is none; ``to_offset`` and ``shift`` are clamped to
the retained range; ``shift`` needs an existing committed offset.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from kops.admin import offsets_for_time, watermarks
from kops.client import AdminSession, ClientSettings, KopsClientError, translate_error
from kops.consume import format_timestamp
from kops.recipes.offsets import (
    GroupInfo,
    TopicPartitionKey,
    alter_group_offsets,
    committed_offsets,
    describe_group,
    topic_partitions,
)

__all__ = [
    "GroupActiveError",
    "PartitionPlan",
    "RewindPlan",
    "RewindTo",
    "SeekToTime",
    "execute_plan",
    "export_offsets",
    "plan_rewind",
    "read_offsets_file",
    "rewind",
]

RewindKind = Literal["datetime", "duration", "offset", "shift", "earliest", "latest", "offsets"]


class GroupActiveError(KopsClientError):
    """The group has live members, so its offsets cannot be reset."""


@dataclass(frozen=True)
class RewindTo:
    """Where to move the group. Build with the class methods."""

    kind: RewindKind
    value: Any = None

    @classmethod
    def datetime(cls, ms: int) -> RewindTo:
        """The first record at or after epoch milliseconds ``ms``."""
        return cls("datetime", int(ms))

    @classmethod
    def duration(cls, seconds: float) -> RewindTo:
        """The first record at or after ``seconds`` ago (measured when the plan is made)."""
        return cls("duration", float(seconds))

    @classmethod
    def offset(cls, n: int) -> RewindTo:
        return cls("offset", int(n))

    @classmethod
    def shift(cls, n: int) -> RewindTo:
        """Move by ``n`` from the committed offset: negative re-reads, positive skips."""
        return cls("shift", int(n))

    @classmethod
    def earliest(cls) -> RewindTo:
        return cls("earliest")

    @classmethod
    def latest(cls) -> RewindTo:
        return cls("latest")

    @classmethod
    def offsets(cls, offsets: Mapping[TopicPartitionKey, int]) -> RewindTo:
        """Explicit offsets per partition (from :func:`read_offsets_file`, e.g. to undo)."""
        return cls("offsets", dict(offsets))

    def describe(self, now_ms: int | None = None) -> str:
        if self.kind == "datetime":
            return f"to {format_timestamp(self.value)}"
        if self.kind == "duration":
            return f"to {self.value:g}s ago" + (
                f" ({format_timestamp(self._time_ms(now_ms))})" if now_ms is not None else ""
            )
        if self.kind == "offset":
            return f"to offset {self.value}"
        if self.kind == "shift":
            return f"shift by {self.value:+d}"
        if self.kind == "offsets":
            return f"to saved offsets ({len(self.value)} partitions)"
        return f"to {self.kind}"

    def _time_ms(self, now_ms: int | None) -> int:
        if self.kind == "datetime":
            return int(self.value)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - int(self.value * 1000)


@dataclass(frozen=True)
class PartitionPlan:
    topic: str
    partition: int
    #: Committed offset now; None when the group has none for this partition.
    current: int | None
    new: int
    log_start: int | None
    log_end: int | None
    #: Why ``new`` is not simply the requested position (fallback to log end, clamping).
    note: str | None = None

    @property
    def reread(self) -> int:
        """Records the group will read again (0 when moving forward or nothing committed)."""
        return max(self.current - self.new, 0) if self.current is not None else 0

    @property
    def skipped(self) -> int:
        """Records the group will never read (0 when moving back or nothing committed)."""
        return max(self.new - self.current, 0) if self.current is not None else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "current_offset": self.current,
            "new_offset": self.new,
            "log_start_offset": self.log_start,
            "log_end_offset": self.log_end,
            "reread": self.reread,
            "skipped": self.skipped,
            "note": self.note,
        }


@dataclass
class RewindPlan:
    group: str
    target: str
    group_state: str
    active_members: int
    partitions: list[PartitionPlan] = field(default_factory=list)
    executed: bool = False

    @property
    def reread(self) -> int:
        return sum(p.reread for p in self.partitions)

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.partitions)

    def previous_offsets(self) -> dict[TopicPartitionKey, int]:
        """Offsets committed before the rewind (partitions that had one)."""
        return {(p.topic, p.partition): p.current for p in self.partitions if p.current is not None}

    def new_offsets(self) -> dict[TopicPartitionKey, int]:
        return {(p.topic, p.partition): p.new for p in self.partitions}

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "target": self.target,
            "group_state": self.group_state,
            "active_members": self.active_members,
            "executed": self.executed,
            "reread": self.reread,
            "skipped": self.skipped,
            "partitions": [p.to_dict() for p in self.partitions],
        }


def rewind(
    target: ClientSettings | str,
    group: str,
    topic: str | None,
    to: RewindTo,
    *,
    partitions: Sequence[int] | None = None,
    execute: bool = False,
    now_ms: int | None = None,
) -> RewindPlan:
    """Plan moving ``group`` on ``topic`` (``partitions``, default all) and, with
    ``execute``, commit the new offsets. :func:`plan_rewind` then :func:`execute_plan`."""
    plan = plan_rewind(target, group, topic, to, partitions=partitions, now_ms=now_ms)
    if execute:
        execute_plan(target, plan)
    return plan


def plan_rewind(
    target: ClientSettings | str,
    group: str,
    topic: str | None,
    to: RewindTo,
    *,
    partitions: Sequence[int] | None = None,
    now_ms: int | None = None,
) -> RewindPlan:
    """Work out the new offsets without changing anything (works on an active group too).

    With ``RewindTo.offsets(...)`` the partitions come from the mapping, narrowed to
    ``topic``/``partitions`` when given. Raises :class:`kops.client.KopsClientError`.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    with AdminSession(target) as admin:
        keys = _select_partitions(admin, topic, to, partitions)
        info = describe_group(admin, group)
        current = committed_offsets(admin, group, keys)
        missing = [
            f"{t}:{p}" for t, p in keys if to.kind == "shift" and current.get((t, p)) is None
        ]
        if missing:
            raise KopsClientError(
                f"cannot shift partition {', '.join(missing)}: group {group!r} has no "
                "committed offset there (use --to-offset, --to-datetime or an end instead)"
            )
        starts, ends = watermarks(admin, keys)
        found: dict[TopicPartitionKey, int | None] = {}
        if to.kind in ("datetime", "duration"):
            found = offsets_for_time(admin, keys, to._time_ms(now_ms))
    return RewindPlan(
        group=group,
        target=to.describe(now_ms),
        group_state=info.state,
        active_members=len(info.members),
        partitions=[
            _plan_partition(key, to, current.get(key), starts.get(key), ends.get(key), found)
            for key in keys
        ],
    )


def execute_plan(target: ClientSettings | str, plan: RewindPlan) -> None:
    """Commit ``plan``'s new offsets. Raises :class:`GroupActiveError` if the group has
    members now (checked again: consumers may have started since the plan was made)."""
    with AdminSession(target) as admin:
        info = describe_group(admin, plan.group)
        if info.active:
            raise _active_error(info)
        alter_group_offsets(admin, plan.group, plan.new_offsets())
    plan.executed = True


def _active_error(info: GroupInfo) -> GroupActiveError:
    n = len(info.members)
    members = f"{n} active member{'s' * (n != 1)}" if n else "a rebalance in progress"
    return GroupActiveError(
        f"cannot rewind group {info.group!r}: it has {members} (state {info.state}); offsets "
        "can only be reset while the group is inactive, so stop its consumers first",
        code="GROUP_NOT_EMPTY",
    )


def _select_partitions(
    admin: AdminSession, topic: str | None, to: RewindTo, partitions: Sequence[int] | None
) -> list[TopicPartitionKey]:
    if to.kind == "offsets":
        keys = sorted(to.value)
        if topic is not None:
            keys = [k for k in keys if k[0] == topic]
        if partitions:
            keys = [k for k in keys if k[1] in partitions]
        if not keys:
            raise KopsClientError("the offsets file has no entry for the selected partitions")
        for t in dict.fromkeys(k[0] for k in keys):
            existing = set(topic_partitions(admin, t))
            _check_exist(t, [p for tt, p in keys if tt == t], existing)
        return keys
    if topic is None:
        raise KopsClientError("a topic is required (only --from-file can do without)")
    existing = topic_partitions(admin, topic)
    if partitions:
        _check_exist(topic, partitions, set(existing))
        return [(topic, p) for p in dict.fromkeys(partitions)]
    return [(topic, p) for p in existing]


def _check_exist(topic: str, wanted: Sequence[int], existing: set[int]) -> None:
    missing = [p for p in wanted if p not in existing]
    if missing:
        raise KopsClientError(
            f"topic {topic!r} has no partition {', '.join(map(str, missing))} "
            f"(it has {len(existing)})",
            code="UNKNOWN_TOPIC_OR_PART",
        )


def _plan_partition(
    key: TopicPartitionKey,
    to: RewindTo,
    current: int | None,
    start: int | None,
    end: int | None,
    found: Mapping[TopicPartitionKey, int | None],
) -> PartitionPlan:
    lo = start if start is not None else 0
    hi = end if end is not None else lo
    note: str | None = None
    if to.kind in ("datetime", "duration"):
        wanted = found.get(key)
        if wanted is None:
            wanted, note = hi, "no record at or after that time: moved to log end"
    elif to.kind == "offset":
        wanted = to.value
    elif to.kind == "shift":
        wanted = (current or 0) + to.value
    elif to.kind == "earliest":
        wanted = lo
    elif to.kind == "latest":
        wanted = hi
    else:
        wanted = to.value[key]
    if wanted < lo:
        wanted, note = lo, f"clamped to log start {lo}"
    elif wanted > hi:
        wanted, note = hi, f"clamped to log end {hi}"
    return PartitionPlan(key[0], key[1], current, wanted, start, end, note)


# --------------------------------------------------------------------------- offsets files


def export_offsets(plan: RewindPlan, path: str | os.PathLike[str]) -> list[TopicPartitionKey]:
    """Write the offsets committed before ``plan`` as ``topic,partition,offset`` lines (the
    CSV of ``kafka-consumer-groups --from-file``). Returns partitions left out because the
    group had no committed offset there (an undo cannot un-commit them)."""
    previous = plan.previous_offsets()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        for (t, p), off in sorted(previous.items()):
            writer.writerow([t, p, off])
    return [(pp.topic, pp.partition) for pp in plan.partitions if pp.current is None]


def _field_columns(line: str) -> list[int]:
    """1-based column where each comma-separated field of ``line`` starts (quotes honoured,
    as the csv module reads them)."""
    cols, quoted = [1], False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            cols.append(i + 2)
    return cols


def read_offsets_file(
    path: str | os.PathLike[str], group: str | None = None
) -> dict[TopicPartitionKey, int]:
    """Parse ``topic,partition,offset`` lines (Kafka's reset CSV). Lines with four fields
    (``group,topic,partition,offset``) are kept only when the group is ``group``. Blank
    lines, ``#`` comments and a header row are ignored.

    A malformed file raises :class:`KopsClientError` naming the line and column
    (``offsets.csv:3:12: ...``), so the bad spot is found without counting commas.
    """
    out: dict[TopicPartitionKey, int] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KopsClientError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    except OSError as exc:
        raise KopsClientError(f"{path}: cannot read: {exc.strerror or exc}") from None
    header_allowed = True
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            row = next(csv.reader([line], strict=True), [])
        except csv.Error as exc:
            raise KopsClientError(f"{path}:{lineno}:1: not valid CSV: {exc}") from None
        fields = [f.strip() for f in row]
        if not fields or not any(fields) or fields[0].startswith("#"):
            continue
        cols = _field_columns(line)
        first = 0
        if len(fields) == 4:
            if group is not None and fields[0] != group:
                header_allowed = False
                continue
            first = 1
        if len(fields) - first != 3:
            # Point at the first field too many, or just past the end of a short line.
            col = cols[first + 3] if len(fields) - first > 3 else len(line) + 1
            raise KopsClientError(
                f"{path}:{lineno}:{col}: expected topic,partition,offset "
                f"(or group,topic,partition,offset), got {len(fields)} fields: {line.strip()!r}"
            )
        t, p, off = fields[first:]
        if not t:
            raise KopsClientError(f"{path}:{lineno}:{cols[first]}: empty topic name")
        numbers = []
        for index, (name, value) in enumerate((("partition", p), ("offset", off)), start=1):
            try:
                n = int(value)
            except ValueError:
                n = None
            if n is None or n < 0:
                if header_allowed and n is None and index == 1:
                    break  # a header row (topic,partition,offset)
                raise KopsClientError(
                    f"{path}:{lineno}:{cols[first + index]}: {name} must be a whole number "
                    f">= 0, got {value!r}"
                ) from None
            numbers.append(n)
        header_allowed = False
        if len(numbers) == 2:
            out[(t, numbers[0])] = numbers[1]
    if not out:
        raise KopsClientError(f"{path}: no offsets found")
    return out


# --------------------------------------------------------------------------- live consumers


class SeekToTime:
    """An ``on_assign`` callback that starts each newly assigned partition at a time.

    For consumers that must stay up (a rewind needs the group to be empty)::

        consumer.subscribe(["orders"], on_assign=SeekToTime(parse_timestamp("2h")))

    Each partition is positioned once per ``SeekToTime`` (``once=True``): when a rebalance
    hands it back later, the consumer resumes from its committed offset, so the group does
    not loop over the same window. Where no record is at or after the time, the partition
    starts at the log end.
    """

    def __init__(self, timestamp_ms: int, *, once: bool = True, timeout: float = 10.0):
        self.timestamp_ms = int(timestamp_ms)
        self.once = once
        self.timeout = timeout
        self.positioned: set[TopicPartitionKey] = set()
        self._cooperative = False

    def __call__(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        fresh = [
            tp
            for tp in partitions
            if not (self.once and (tp.topic, tp.partition) in self.positioned)
        ]
        by_key: dict[TopicPartitionKey, TopicPartition] = {}
        if fresh:
            query = [TopicPartition(tp.topic, tp.partition, self.timestamp_ms) for tp in fresh]
            try:
                found = consumer.offsets_for_times(query, timeout=self.timeout)
            except KafkaException as exc:
                raise translate_error(exc, "look up offsets by time", fresh[0].topic) from exc
            for tp in found:
                if tp.error is not None:
                    raise translate_error(KafkaException(tp.error), "look up offsets by time")
                offset = tp.offset if tp.offset >= 0 else OFFSET_END
                by_key[(tp.topic, tp.partition)] = TopicPartition(tp.topic, tp.partition, offset)
            self.positioned.update(by_key)
        chosen = [by_key.get((tp.topic, tp.partition), tp) for tp in partitions]
        # The client's Python API does not say which rebalance protocol is in use: the eager
        # one wants assign(), the cooperative one incremental_assign() with only the added
        # partitions, and each refuses the other's call. Try, then remember.
        if self._cooperative:
            consumer.incremental_assign(chosen)
            return
        try:
            consumer.assign(chosen)
        except KafkaException:
            consumer.incremental_assign(chosen)
            self._cooperative = True
