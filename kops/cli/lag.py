"""``kops lag [GROUP...]``: lag per partition in records and seconds, with a status. Logic
is in kops.recipes.lag."""

from __future__ import annotations

import time

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table

from kops.cli.common import (
    DURATION,
    console,
    echo_err,
    graceful_stop,
    kafka_options,
    print_json,
    progress_bar,
)
from kops.client import ClientSettings
from kops.recipes.lag import STATUS_TEXT, GroupLag, LagMonitor


def format_age(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``5m12s``, ``3h05m``, ``2d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _status(status: str) -> str:
    return STATUS_TEXT.get(status, status)


def _tables(groups: list[GroupLag]) -> Group:
    tables = []
    for g in groups:
        title = (
            f"{g.group}: {g.state.lower()}, {g.members} member{'s' * (g.members != 1)}, "
            f"lag {g.total_lag} records / {format_age(g.max_lag_seconds)}, {_status(g.status)}"
        )
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in ("TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "LAG-TIME"):
            table.add_column(col, justify="left" if col == "TOPIC" else "right")
        table.add_column("STATUS")
        table.add_column("OWNER")
        for p in g.partitions:
            table.add_row(
                p.topic,
                str(p.partition),
                _fmt(p.committed),
                _fmt(p.log_end),
                _fmt(p.lag),
                format_age(p.lag_seconds),
                _status(p.status),
                p.owner or "-",
            )
        tables.append(table)
    return Group(*tables)


@click.command("lag")
@click.argument("groups", nargs=-1)
@click.option("--topic", "-t", default=None, help="Only this topic.")
@click.option(
    "--samples",
    "-n",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Samples per partition to judge the status from (with --watch: the window kept).",
)
@click.option(
    "--interval",
    "-i",
    type=DURATION,
    default="3s",
    show_default=True,
    help="Time between samples. samples x interval should exceed the consumers' commit "
    "interval (5s for librdkafka auto-commit).",
)
@click.option("--watch", "-w", is_flag=True, help="Keep sampling and redraw a live table.")
@click.option(
    "--no-time-lag", is_flag=True, help="Skip the lag-in-seconds estimate (one fetch each)."
)
@kafka_options()
def lag(
    *,
    groups: tuple[str, ...],
    topic: str | None,
    samples: int,
    interval: float,
    watch: bool,
    no_time_lag: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Show consumer lag for GROUPS (default: every group).

    Per partition: committed offset, log end offset, lag in records, lag in time (age of
    the oldest unconsumed record) and a status judged from several samples:

    \b
      OK       caught up at least once in the window, or consuming and keeping up
      STALLED  committed offset frozen while lagging, and a live member owns the partition
      STOPPED  committed offset frozen while lagging, and no member owns the partition
      REWOUND  the committed offset went backwards
      GROWING  consuming, but lag never fell and ended higher than it started
      no commits yet (NO_COMMITS in --json)
               the group has committed nothing for the partition yet
      UNKNOWN  too few samples to judge, or no log end known

    With --watch and --json, one JSON document per line per refresh.
    """
    with LagMonitor(settings, list(groups) or None, topic=topic, window=samples) as monitor:
        if watch:
            _watch(monitor, interval, as_json=as_json, time_lag=not no_time_lag)
            return
        with progress_bar(transient=True) as bar:
            task = bar.add_task("sampling", total=samples)
            for i in range(samples):
                if i:
                    time.sleep(interval)
                monitor.sample()
                bar.update(task, completed=i + 1)
        report = monitor.report(time_lag=not no_time_lag)
    if as_json:
        print_json([g.to_dict() for g in report])
        return
    if not report:
        echo_err("no consumer groups with committed offsets")
        return
    console().print(_tables(report))


def _watch(monitor: LagMonitor, interval: float, *, as_json: bool, time_lag: bool) -> None:
    # Until SIGTERM or Ctrl-C: the sample under way is finished and shown, then the monitor
    # closes and the command exits 143 (SIGTERM) or 130 (Ctrl-C).
    with graceful_stop() as stop:
        if as_json:
            while not stop.is_set():
                monitor.sample()
                print_json([g.to_dict() for g in monitor.report(time_lag=time_lag)], compact=True)
                stop.wait(interval)
            return
        with Live(console=console(), auto_refresh=False) as live:
            while not stop.is_set():
                monitor.sample()
                view = _tables(monitor.report(time_lag=time_lag))
                live.update(view, refresh=True)
                stop.wait(interval)
