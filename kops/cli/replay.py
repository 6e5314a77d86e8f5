"""``kops replay TOPIC``: copy a time window into another topic. Logic is in
kops.recipes.replay."""

from __future__ import annotations

import click

from kops.cli.common import (
    INT_LIST,
    TIMESTAMP,
    echo_err,
    graceful_stop,
    kafka_options,
    print_json,
    progress_bar,
)
from kops.client import ClientSettings
from kops.consume import format_timestamp
from kops.recipes.replay import replay as replay_window


@click.command("replay")
@click.argument("topic")
@click.option(
    "--from",
    "from_ms",
    type=TIMESTAMP,
    required=True,
    help="Window start, inclusive: ISO-8601 (UTC if no offset), epoch ms, or a duration ago (2h).",
)
@click.option(
    "--to",
    "to_ms",
    type=TIMESTAMP,
    default="now",
    show_default=True,
    help="Window end, exclusive (same forms as --from).",
)
@click.option("--into", required=True, metavar="TOPIC", help="Destination topic.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most this many records per second [default: as fast as possible].",
)
@click.option(
    "--partitions", "-p", type=INT_LIST, default=None, help="Only these source partitions."
)
@click.option(
    "--keep-partition",
    is_flag=True,
    help="Write each record to the same partition number [default: partition by key].",
)
@click.option(
    "--create",
    is_flag=True,
    help="Create the destination (same partition count) if it does not exist.",
)
@click.option(
    "--exactly-once",
    is_flag=True,
    help="Copy in transactions, resumable: every record of the window once for "
    "read_committed readers; a re-run with the same arguments goes on where a stopped or "
    "killed one left off (needs brokers with transactions).",
)
@click.option(
    "--group",
    default=None,
    help="With --exactly-once: the consumer group keeping the progress "
    "[default: kops.replay.TOPIC.INTO.FROM-TO].",
)
@kafka_options()
def replay(
    *,
    topic: str,
    from_ms: int,
    to_ms: int,
    into: str,
    rate: float | None,
    partitions: list[int] | None,
    keep_partition: bool,
    create: bool,
    exactly_once: bool,
    group: str | None,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Copy TOPIC's records with timestamps in [--from, --to) into another topic.

    A non-destructive rewind: no consumer group's offsets change; point a consumer at the
    copy to process the window again. Keys, values, headers and timestamps are kept.

    With --exactly-once the copy goes in transactions, its progress committed on a group of
    the replay's own (source groups are still untouched): stop or kill it, run it again with
    the same arguments (--to as a time, not the default now) and it resumes; once the window
    is done a re-run copies nothing.
    """
    if group is not None and not exactly_once:
        raise click.UsageError("--group keeps the progress of an --exactly-once replay")
    ctx = click.get_current_context()
    if exactly_once and ctx.get_parameter_source("to_ms") == click.core.ParameterSource.DEFAULT:
        echo_err(
            f"note: --to is now ({format_timestamp(to_ms)}); to resume, re-run with --to {to_ms}"
        )
    # SIGTERM/Ctrl-C set the stop event: the reader stops (at once, also while waiting for
    # records), the producer flushes what was read into --into, and the partial report is
    # printed before the command exits 143/130.
    with graceful_stop(exit_on_signal=False) as stop, progress_bar() as bar:
        task = bar.add_task(f"replay {topic} -> {into}", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = replay_window(
            settings,
            topic,
            into,
            from_ms,
            to_ms,
            partitions=partitions,
            rate=rate,
            keep_partition=keep_partition,
            create=create,
            progress=on_progress,
            stop=stop.event,
            exactly_once=exactly_once,
            group=group,
        )
    if as_json:
        print_json(report.to_dict())
    window = f"[{format_timestamp(from_ms)}, {format_timestamp(to_ms)})"
    echo_err(
        f"copied {report.copied} record{'s' * (report.copied != 1)} from {topic} {window} "
        f"into {into} in {report.elapsed:.1f}s"
        + (f" ({report.outside_window} read outside the window)" if report.outside_window else "")
    )
    if report.done:
        echo_err(
            f"window done (group {report.group})"
            + (
                ": copied by an earlier run, nothing copied now"
                if report.resumed and not report.copied
                else ""
            )
        )
    elif report.group is not None:
        echo_err(f"progress committed on group {report.group}: re-run to go on")
    if report.partial:
        echo_err(
            f"{stop.signal_name or 'stop'}: replay stopped after reading {report.read} "
            f"record(s) from {topic}; {report.copied} copied into {into} (the copy is "
            "incomplete)"
        )
    if not report.ok:
        raise click.ClickException(
            f"{report.failed} record(s) not delivered to {into}: {'; '.join(report.errors)}"
        )
    stop.exit_if_stopped()  # a signal came as the copy finished: still 143/130
