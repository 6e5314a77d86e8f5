"""``kops top``: a live view of the cluster. Logic is in kops.recipes.top."""

from __future__ import annotations

import time
from datetime import datetime

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kops.cli.common import DURATION, console, echo_err, graceful_stop, kafka_options, print_json
from kops.cli.delay import tier_options
from kops.cli.lag import format_age
from kops.client import ClientSettings
from kops.errors import KopsError
from kops.recipes.delay import DelayTiers
from kops.recipes.lag import STATUS_TEXT
from kops.recipes.top import Snapshot, TopSampler


def _num(value: float | int | None, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(title: str, *columns: str, left: int = 1) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right")
    return table


def _due(oldest_due_ms: int | None, overdue_s: float | None, now: float) -> str:
    if oldest_due_ms is None:
        return "-"
    if overdue_s:
        return f"late {format_age(overdue_s)}"
    return f"in {format_age(max(oldest_due_ms / 1000 - now, 0.0))}"


def render(snap: Snapshot, *, interval: float | None = None) -> RenderableType:
    """The tables of one snapshot, for people: the short sections first, topics (the longest,
    busiest first) last, so a small terminal crops the least telling rows."""
    when = datetime.fromtimestamp(snap.taken_at).strftime("%H:%M:%S")
    controller = _num(snap.controller_id, "{}")
    head = f"kops top  {when}  cluster {snap.cluster_id or '-'}  controller {controller}"
    if interval:
        head += f"  every {interval:g}s"
    parts: list[RenderableType] = [Text(head)]

    brokers = _table("brokers", "ID", "HOST:PORT", "ROLE", "LEADERS", left=3)
    for b in snap.brokers:
        role = "controller" if b.controller else ""
        brokers.add_row(str(b.id), f"{b.host}:{b.port}", role, str(b.leader_partitions))
    parts.append(brokers)

    if snap.groups:
        groups = _table("groups", "GROUP", "STATE", "MEMBERS", "LAG", "LAG-TIME", "STATUS", left=2)
        for g in snap.groups:
            groups.add_row(
                g.group, g.state.lower(), str(g.members), f"{g.total_lag:,}",
                format_age(g.max_lag_seconds), STATUS_TEXT.get(g.status, g.status),
            )  # fmt: skip
        parts.append(groups)
    else:
        parts.append(Text("groups: none"))

    # Eighteen idle tiers would push everything else off the screen: show the ones with
    # something to say (JSON has every tier).
    shown = [r for r in snap.delay_tiers if r.backlog or r.delivered or r.forwarded_rate]
    hidden = len(snap.delay_tiers) - len(shown)
    if shown:
        cols = ["TIER", "TOPIC", "BACKLOG", "OLDEST DUE"]
        if snap.workers:
            cols += ["LATE P50 MS", "LATE P99 MS", "DELIVERED", "FWD/S"]
        tiers = _table("delay tiers", *cols, left=2)
        for r in shown:
            row = [
                r.tier, r.topic, f"{r.backlog:,}", _due(r.oldest_due_ms, r.overdue_s, snap.taken_at)
            ]  # fmt: skip
            if snap.workers:
                row += [
                    _num(r.lateness_p50_ms, "{:,.1f}"), _num(r.lateness_p99_ms, "{:,.1f}"),
                    _num(r.delivered), _num(r.forwarded_rate, "{:,.1f}"),
                ]  # fmt: skip
            tiers.add_row(*row)
        parts.append(tiers)
        if hidden:
            parts.append(Text(f"({hidden} idle delay tiers not shown)"))
    elif hidden:
        parts.append(Text(f"delay tiers: {hidden}, all empty"))
    else:
        parts.append(Text("delay tiers: none"))

    if snap.dlqs:
        dlqs = _table("dead-letter topics", "TOPIC", "PARTITIONS", "RECORDS", "GROWTH")
        for d in snap.dlqs:
            growth = "-" if d.growth is None else f"+{d.growth:,}"
            dlqs.add_row(d.topic, str(d.partitions), f"{d.records:,}", growth)
        parts.append(dlqs)
    else:
        parts.append(Text("dead-letter topics: none"))

    if snap.workers:
        workers = _table("workers", "METRICS", "STATUS", left=2)
        for w in snap.workers:
            workers.add_row(w.url, "ok" if w.ok else f"unreachable: {w.error}")
        parts.append(workers)

    topics = _table(
        "topics", "TOPIC", "PARTITIONS", "MSG/S", "END OFFSET", "RECORDS", "UNDER-REPL", "OFFLINE"
    )
    for t in sorted(snap.topics, key=lambda t: (-(t.rate or 0.0), t.topic)):
        topics.add_row(
            t.topic, str(t.partitions), _num(t.rate, "{:,.1f}"), f"{t.end_offset:,}",
            f"{t.records:,}", str(t.under_replicated), str(t.offline),
        )  # fmt: skip
    parts.append(topics)

    spaced: list[RenderableType] = []
    for p in parts:
        spaced += [p, Text("")]
    return Group(*spaced[:-1])


@click.command("top")
@click.option(
    "--interval",
    "-i",
    type=DURATION,
    default="2s",
    show_default=True,
    help="Time between refreshes (rates are measured over it). With --once, 0 takes a "
    "single snapshot (no rates).",
)
@click.option(
    "--worker-metrics",
    "-w",
    "worker_metrics",
    multiple=True,
    metavar="URL|HOST:PORT",
    help="A worker's Prometheus address (kops worker run --metrics HOST:PORT) for the "
    "figures only workers know: delay lateness p50/p99, forwarded/s (repeatable).",
)
@click.option("--once", is_flag=True, help="Print one view (or --json document) and exit.")
@click.option(
    "--no-time-lag", is_flag=True, help="Skip the groups' lag-in-seconds estimate (one fetch each)."
)
@tier_options
@kafka_options()
def top(
    *,
    interval: float,
    worker_metrics: tuple[str, ...],
    once: bool,
    no_time_lag: bool,
    tiers: DelayTiers,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """A live view of the cluster, refreshed every --interval until Ctrl-C or SIGTERM.

    \b
      brokers      id, address, the controller, partitions each leads
      topics       messages/s (end offsets between two refreshes), end offset, records,
                   under-replicated and offline partitions
      groups       total lag in records and time, status (as kops lag)
      delay tiers  backlog (as kops delay status), when the oldest record is due (or how late);
                   lateness p50/p99 and forwarded/s with --worker-metrics
      dead letters records in each *.dlq topic, growth since the last refresh

    Only the Kafka protocol is used, so it works against any Kafka cluster. With --json,
    one JSON document per line per refresh; --once --json prints one (pretty) and exits.
    """
    if interval <= 0 and not once:
        raise click.UsageError("--interval must be above 0 (0 only with --once)")
    with TopSampler(
        settings, tiers=tiers, worker_metrics=worker_metrics, time_lag=not no_time_lag
    ) as sampler:
        if once:
            snap = sampler.snapshot()
            if interval > 0:
                time.sleep(interval)
                snap = sampler.snapshot()
            if as_json:
                print_json(snap.to_dict())
            else:
                console().print(render(snap))
            return
        _live(sampler, interval, as_json=as_json)


def _live(sampler: TopSampler, interval: float, *, as_json: bool) -> None:
    # The first snapshot fails like any command (one error line, exit 1) when the cluster
    # does not answer; later failures are shown and retried, so a broker restart does not
    # end the view. SIGTERM/Ctrl-C finish the snapshot under way, then exit 143/130.
    with graceful_stop() as stop:
        snap = sampler.snapshot()
        if as_json:
            while True:
                print_json(snap.to_dict(), compact=True)
                if stop.wait(interval):
                    return
                try:
                    snap = sampler.snapshot()
                except KopsError as exc:
                    echo_err(f"error: {exc}")
        with Live(console=console(), auto_refresh=False) as live:
            view = render(snap, interval=interval)
            while True:
                live.update(view, refresh=True)
                if stop.wait(interval):
                    return
                try:
                    snap = sampler.snapshot()
                    view = render(snap, interval=interval)
                except KopsError as exc:
                    view = Group(render(snap, interval=interval), Text(f"error: {exc}"))
