"""``kops backlog fanout`` / ``kops backlog status``: drain a big backlog with many consumers.
Logic is in kops.recipes.fanout."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Group
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
from kops.cli.lag import format_age
from kops.client import ClientSettings, KopsClientError
from kops.recipes.fanout import BacklogFanout, BacklogStatus, FanoutProgress, Side, backlog_status


@click.group("backlog")
def backlog() -> None:
    """Drain a big backlog faster: fan it out to many partitions, then watch the drain.

    \b
      kops backlog fanout --from orders --group billing --to orders.fanout --partitions 64
      kops backlog status --group billing
    """


@backlog.command("fanout")
@click.option("--from", "source", required=True, metavar="TOPIC", help="Topic with the backlog.")
@click.option(
    "--group",
    "-g",
    required=True,
    help="Consumer group whose committed offsets mark the backlog; the fan-out commits its "
    "progress there, so a restart resumes.",
)
@click.option("--to", "target", required=True, metavar="TOPIC", help="Topic to fan out to.")
@click.option(
    "--partitions",
    "-p",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Partitions of the target (created with this many if missing; an existing target "
    "must have exactly this many).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most this many records per second [default: as fast as possible].",
)
@click.option(
    "--start",
    "start",
    metavar="earliest|latest|TIME",
    default=None,
    help="Where partitions GROUP never committed begin: earliest (the whole topic), latest "
    "(only new records) or a time (ISO-8601, epoch ms, 2h ago). Required when GROUP has no "
    "committed offsets on --from; committed partitions always resume.",
)
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Stop once the backlog found at start is forwarded [default: keep following].",
)
@click.option(
    "--drain-group",
    default=None,
    help="Group of the consumers that will drain the target (recorded for 'backlog status').",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    default=None,
    help="For a created target [default: the broker's].",
)
@click.option("--no-create", is_flag=True, help="Fail if the target topic does not exist.")
@click.option(
    "--exactly-once",
    is_flag=True,
    help="Read --from with read_committed and forward and commit each round in one "
    "transaction: read_committed readers of --to see every record once, also after a "
    "crash (needs brokers with transactions).",
)
@kafka_options()
def fanout(
    *,
    source: str,
    group: str,
    target: str,
    partitions: int,
    rate: float | None,
    start: str | None,
    until_caught_up: bool,
    drain_group: str | None,
    replication_factor: int | None,
    no_create: bool,
    exactly_once: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Forward GROUP's backlog on --from to --to, a topic with many partitions.

    Records keep their key, value, headers and timestamp; a key always lands on the same
    target partition (Kafka's murmur2 partitioner), so per-key order holds. Offsets are
    committed on GROUP only after the target acknowledged the records: stop it (Ctrl-C) or
    kill it at any time and run it again to resume. Records forwarded twice after a crash
    carry the same kops.message.id header, for idempotent drain consumers.

    With --exactly-once nothing is forwarded twice: each round's records and GROUP's offsets
    are one transaction, so drain consumers with isolation.level=read_committed see every
    record once. A cluster that refuses transactions stops it with an error.
    """
    job = BacklogFanout(
        settings,
        source,
        group,
        target,
        partitions,
        rate=rate,
        start=start,
        drain_group=drain_group,
        create=not no_create,
        replication_factor=replication_factor,
        exactly_once=exactly_once,
    )
    try:
        job.check_start()
    except KopsClientError as exc:
        if exc.code != "NO_COMMITTED_OFFSETS":
            raise
        raise click.ClickException(f"{exc} with --start earliest|latest|TIME") from None
    # SIGTERM/Ctrl-C ask the fan-out to flush, commit and return; then exit 143/130.
    with graceful_stop(on_stop=job.stop, exit_on_signal=False) as stop, progress_bar() as bar:
        task = bar.add_task(f"{source} -> {target}", total=None)

        def on_progress(p: FanoutProgress) -> None:
            bar.update(task, completed=p.forwarded, total=p.total if until_caught_up else None)

        report = job.run(until_caught_up=until_caught_up, progress=on_progress)
    if as_json:
        print_json(report.to_dict())
    created = f" (created with {partitions} partitions)" if report.created_target else ""
    echo_err(
        f"forwarded {report.forwarded} record{'s' * (report.forwarded != 1)} from {source} "
        f"to {target}{created} in {report.elapsed:.1f}s ({report.rate:,.0f}/s); "
        + ("caught up" if report.caught_up else "progress committed on group " + group)
    )
    stop.exit_if_stopped()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def _eta(side: Side) -> str:
    eta = side.eta_seconds
    if eta is None:
        return "-"
    return "done" if eta == 0 else format_age(eta)


def _summary(status: BacklogStatus) -> Table:
    table = Table(title=f"backlog of group {status.group}", title_justify="left", box=None)
    for col in ("PART", "TOPIC", "GROUP", "RECORDS", "LAG", "LAG-TIME"):
        table.add_column(col, justify="left" if col in ("PART", "TOPIC", "GROUP") else "right")
    for col in ("CONSUMED", "PRODUCED", "ETA"):
        table.add_column(col, justify="right")
    table.add_column("STATUS")
    src = status.source
    table.add_row(
        "source",
        ",".join(src.topics) or "-",
        status.group,
        "-",
        _count(src.total_lag),
        format_age(src.lag.max_lag_seconds if src.lag else None),
        _rate(src.consume_rate),
        _rate(src.produce_rate),
        _eta(src),
        src.lag.status if src.lag else "-",
    )
    progress = status.fanout_progress
    table.add_row(
        "fan-out",
        status.target or "-",
        "-",
        _count(status.forwarded),
        "-",
        "-",
        "-",
        "-",
        "-",
        "-" if progress is None else f"{progress:.1%} forwarded",
    )
    if status.drain is not None:
        d = status.drain
        members = f", {d.lag.members} member{'s' * (d.lag.members != 1)}" if d.lag else ""
        table.add_row(
            "drain",
            status.target or "-",
            d.group + members,
            "-",
            _count(d.total_lag),
            format_age(d.lag.max_lag_seconds if d.lag else None),
            _rate(d.consume_rate),
            _rate(d.produce_rate),
            _eta(d),
            d.lag.status if d.lag else "-",
        )
    return table


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _partitions(side: Side, title: str) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in ("TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "LAG-TIME"):
        table.add_column(col, justify="left" if col == "TOPIC" else "right")
    table.add_column("STATUS")
    for p in side.lag.partitions if side.lag else ():
        table.add_row(
            p.topic,
            str(p.partition),
            _count(p.committed),
            _count(p.log_end),
            _count(p.lag),
            format_age(p.lag_seconds),
            p.status,
        )
    return table


@backlog.command("status")
@click.option("--group", "-g", required=True, help="The fan-out's source group.")
@click.option(
    "--to",
    "target",
    default=None,
    metavar="TOPIC",
    help="Target topic [default: from the fan-out's commit metadata].",
)
@click.option(
    "--drain-group",
    default=None,
    help="Group draining the target [default: from the fan-out's commit metadata].",
)
@click.option(
    "--interval",
    "-i",
    type=DURATION,
    default="0",
    show_default=True,
    help="Sample twice this far apart for rates and the drain ETA, L/(C-R).",
)
@click.option("--detail", "-d", is_flag=True, help="Also list every partition.")
@kafka_options()
def status(
    *,
    group: str,
    target: str | None,
    drain_group: str | None,
    interval: float,
    detail: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Backlog left on the source, records forwarded, and the drain group's lag.

    Lag is in records and in time (age of the oldest record not yet consumed). With
    --interval, rates are how fast the committed offsets (CONSUMED) and the log ends
    (PRODUCED) moved, and ETA = lag / (CONSUMED - PRODUCED) when the group is gaining.
    """
    if interval > 0 and not as_json:
        with progress_bar(transient=True) as bar:
            bar.add_task(f"sampling for {interval:g}s", total=None)
            result = backlog_status(
                settings, group, target=target, drain_group=drain_group, interval=interval
            )
    else:
        result = backlog_status(
            settings, group, target=target, drain_group=drain_group, interval=interval
        )
    if as_json:
        print_json(result.to_dict())
        return
    parts: list[Any] = [_summary(result)]
    if detail:
        parts.append(_partitions(result.source, f"source group {group}"))
        if result.drain is not None:
            parts.append(_partitions(result.drain, f"drain group {result.drain.group}"))
    console().print(Group(*parts))
    for note in result.notes:
        echo_err(f"note: {note}")
