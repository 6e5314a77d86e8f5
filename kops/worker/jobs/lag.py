"""The ``consumer-lag`` job kind: a lag exporter, like kafka-lag-exporter, inside the worker.

Every run (``every = "15s"``; ``kops worker run --metrics`` adds one by itself) it measures
the lag of its groups and sets, per group, topic and partition,

- ``kafka_consumergroup_group_lag``: log end offset minus the committed offset;
- ``kafka_consumergroup_group_lag_seconds``: the age of the oldest record the group has not
  consumed (now minus the timestamp of the record at the committed offset; 0 when caught up).

Its groups are ``groups = [...]`` of its ``[[job]]`` table, the groups named in the recipe
files' ``[metrics] lag_groups``, and (unless ``worker_groups = false``) the groups the
worker's other jobs consume in (delay forwarders, retry consumers, fan-outs and their drain
consumers). Partitions the group has committed nothing for are left out; series of
partitions that are gone are removed. Offsets come from :class:`kops.recipes.lag.LagMonitor`
(one admin session kept across runs) and timestamps from one consumer kept across runs,
which reads one record per lagging partition.

Wired as ``"consumer-lag": "kops.worker.jobs.lag:consumer_lag_job"`` in
:data:`kops.worker.registry.BUILTIN_KINDS`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from kops.recipes.lag import GroupLag, LagMonitor
from kops.recipes.metrics import CONSUMER_LAG, CONSUMER_LAG_SECONDS
from kops.worker.registry import JobContext, RecipeError, take_options

__all__ = ["DEFAULT_LAG_INTERVAL", "LagExporter", "consumer_lag_job", "export_lag"]

#: Seconds between lag measurements when nothing says otherwise (kafka-lag-exporter: 30 s).
DEFAULT_LAG_INTERVAL = 15.0

_Labels = tuple[str, str, str]


def export_lag(groups: list[GroupLag], previous: Iterable[_Labels] = ()) -> set[_Labels]:
    """Set the lag gauges from a report; remove the series in ``previous`` not reported
    again. Returns the label sets now set (pass them as ``previous`` next time)."""
    now: set[_Labels] = set()
    for group in groups:
        for p in group.partitions:
            if p.lag is None:
                continue  # nothing committed yet: no lag to speak of
            labels = (p.group, p.topic, str(p.partition))
            CONSUMER_LAG.labels(*labels).set(p.lag)
            if p.lag_seconds is not None:
                CONSUMER_LAG_SECONDS.labels(*labels).set(p.lag_seconds)
            now.add(labels)
    for labels in set(previous) - now:
        for gauge in (CONSUMER_LAG, CONSUMER_LAG_SECONDS):
            gauge.remove(*labels)  # a label set never set is ignored
    return now


class LagExporter:
    """The periodic job: one measurement per call."""

    def __init__(self, context: JobContext, groups: list[str], *, worker_groups: bool):
        self.context = context
        self.groups = groups
        self.worker_groups = worker_groups
        self._monitor: LagMonitor | None = None
        self._exported: set[_Labels] = set()
        self._lock = threading.Lock()

    def followed(self) -> list[str]:
        """Every group it measures: its own, then the worker's, without repeats."""
        groups = list(self.groups)
        if self.worker_groups:
            groups += self.context.worker_groups()
        return list(dict.fromkeys(groups))

    def __call__(self) -> None:
        with self._lock:
            groups = self.followed()
            if not groups:
                self.context.note("no consumer groups to follow")
                return
            monitor = self._monitor
            if monitor is None or monitor.groups != groups:
                if monitor is not None:
                    monitor.close()
                monitor = self._monitor = LagMonitor(
                    self.context.settings, groups, window=1, skip_unknown=True, reuse_reader=True
                )
            try:
                monitor.sample()
                report = monitor.report()
            except Exception:
                # A fresh session next time (the broker may have been replaced meanwhile).
                monitor.close()
                self._monitor = None
                raise
            self._exported = export_lag(report, self._exported)
            total = sum(g.total_lag for g in report)
            worst = max((g.max_lag_seconds or 0.0 for g in report), default=0.0)
            self.context.note(
                f"{len(report)}/{len(groups)} groups, lag {total} records, oldest {worst:.1f}s"
            )

    def close(self) -> None:
        with self._lock:
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None


def consumer_lag_job(options: dict[str, Any], context: JobContext) -> LagExporter:
    """Factory of the ``consumer-lag`` kind: options ``groups`` (a list or ``"a,b"``) and
    ``worker_groups`` (true: also the groups of the worker's other jobs)."""
    opts = take_options(options, {"groups", "worker_groups"}, context.kind)
    if not context.periodic:
        raise RecipeError(f'{context.kind} is periodic: give it every = "15s" (or cron)')
    groups = opts.get("groups", [])
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise RecipeError(f"{context.kind}: groups must be a list of group names")
    return LagExporter(context, groups, worker_groups=bool(opts.get("worker_groups", True)))
