"""``kops rewind GROUP``: move a group's committed offsets. Logic is in kops.recipes.rewind."""

from __future__ import annotations

import click
from rich.table import Table

from kops.cli.common import (
    DURATION,
    INT_LIST,
    TIMESTAMP,
    console,
    echo_err,
    kafka_options,
    print_json,
)
from kops.client import ClientSettings
from kops.recipes.rewind import (
    PartitionPlan,
    RewindPlan,
    RewindTo,
    execute_plan,
    export_offsets,
    plan_rewind,
    read_offsets_file,
)


def _change(p: PartitionPlan) -> str:
    if p.current is None:
        return "first commit"
    if p.reread:
        return f"re-read {p.reread}"
    if p.skipped:
        return f"skip {p.skipped}"
    return "unchanged"


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _print_plan(plan: RewindPlan) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("TOPIC", "PARTITION", "CURRENT", "NEW", "LOG-START", "LOG-END", "CHANGE"):
        table.add_column(col, justify="left" if col in ("TOPIC", "CHANGE") else "right")
    table.add_column("NOTE")
    for p in plan.partitions:
        table.add_row(
            p.topic,
            str(p.partition),
            _fmt(p.current),
            str(p.new),
            _fmt(p.log_start),
            _fmt(p.log_end),
            _change(p),
            p.note or "",
        )
    console().print(table)


def _target(
    to_datetime: int | None,
    by_duration: float | None,
    to_offset: int | None,
    shift_by: int | None,
    to_latest: bool,
    from_file: str | None,
    group: str,
) -> RewindTo:
    if to_datetime is not None:
        return RewindTo.datetime(to_datetime)
    if by_duration is not None:
        return RewindTo.duration(by_duration)
    if to_offset is not None:
        return RewindTo.offset(to_offset)
    if shift_by is not None:
        return RewindTo.shift(shift_by)
    if from_file is not None:
        return RewindTo.offsets(read_offsets_file(from_file, group))
    return RewindTo.latest() if to_latest else RewindTo.earliest()


@click.command("rewind")
@click.argument("group")
@click.option("--topic", "-t", default=None, help="Topic whose offsets to move.")
@click.option(
    "--partitions",
    "-p",
    type=INT_LIST,
    default=None,
    help="Only these partitions, e.g. 0,2 [default: all].",
)
@click.option(
    "--to-datetime",
    type=TIMESTAMP,
    default=None,
    help="First record at or after this time: ISO-8601 (UTC if no offset), epoch ms, or a "
    "duration ago (2h).",
)
@click.option(
    "--by-duration",
    type=DURATION,
    default=None,
    help="First record at or after this long ago, e.g. 30m, 1h, 2d.",
)
@click.option("--to-offset", type=click.IntRange(min=0), default=None, help="This offset.")
@click.option(
    "--shift-by",
    type=int,
    default=None,
    metavar="N",
    help="Move by N from the committed offset: negative re-reads, positive skips.",
)
@click.option("--to-earliest", is_flag=True, help="The oldest retained record.")
@click.option("--to-latest", is_flag=True, help="The log end (skip everything unread).")
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Offsets from a topic,partition,offset CSV (as written by --export).",
)
@click.option("--execute", is_flag=True, help="Commit the new offsets [default: dry run].")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Save the offsets committed now to this CSV, to undo later with --from-file.",
)
@kafka_options()
def rewind(
    *,
    group: str,
    topic: str | None,
    partitions: list[int] | None,
    to_datetime: int | None,
    by_duration: float | None,
    to_offset: int | None,
    shift_by: int | None,
    to_earliest: bool,
    to_latest: bool,
    from_file: str | None,
    execute: bool,
    export_path: str | None,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Move GROUP's committed offsets on a topic, like kafka-consumer-groups --reset-offsets.

    Give exactly one of --to-datetime, --by-duration, --to-offset, --shift-by,
    --to-earliest, --to-latest, --from-file. Without --execute nothing changes: the plan is
    printed per partition (committed offset, new offset, records re-read or skipped).
    --execute refuses while the group has active members (stop its consumers first).

    For a time, a partition moves to its first record at or after it, or to the log end
    when there is none (shown in NOTE). Offsets outside the retained range are clamped.
    """
    options = {
        "--to-datetime": to_datetime is not None,
        "--by-duration": by_duration is not None,
        "--to-offset": to_offset is not None,
        "--shift-by": shift_by is not None,
        "--to-earliest": to_earliest,
        "--to-latest": to_latest,
        "--from-file": from_file is not None,
    }
    given = [name for name, used in options.items() if used]
    if len(given) != 1:
        detail = f" ({' and '.join(given)} cannot be combined)" if given else ""
        raise click.UsageError(f"give exactly one of {', '.join(options)}{detail}")
    if topic is None and from_file is None:
        raise click.UsageError("--topic is required (except with --from-file)")
    to = _target(to_datetime, by_duration, to_offset, shift_by, to_latest, from_file, group)

    plan = plan_rewind(settings, group, topic, to, partitions=partitions)
    skipped_export: list[tuple[str, int]] = []
    if export_path is not None:
        skipped_export = export_offsets(plan, export_path)
    if execute:
        execute_plan(settings, plan)

    if as_json:
        data = plan.to_dict()
        if export_path is not None:
            data["exported_to"] = export_path
        print_json(data)
    else:
        _print_plan(plan)

    if export_path is not None:
        saved = len(plan.partitions) - len(skipped_export)
        echo_err(
            f"saved the current offsets of {saved} partition{'s' * (saved != 1)} to "
            f"{export_path} (undo with: kops rewind {group} --from-file {export_path} --execute)"
        )
        if skipped_export:
            names = ", ".join(f"{t}:{p}" for t, p in skipped_export)
            echo_err(f"note: {names} had no committed offset; an undo cannot remove one")
    n = len(plan.partitions)
    summary = (
        f"re-read {plan.reread} and skip {plan.skipped} records on {n} partition{'s' * (n != 1)}"
    )
    first = sum(1 for p in plan.partitions if p.current is None)
    if first:
        summary += f", {first} of them without a previous commit"
    if execute:
        echo_err(f"committed: group {group} will {summary} ({plan.target})")
    else:
        echo_err(f"dry run: group {group} would {summary} ({plan.target}); add --execute to commit")
        if plan.active_members:
            echo_err(
                f"warning: group {group} has {plan.active_members} active member"
                f"{'s' * (plan.active_members != 1)}; --execute will refuse until they stop"
            )
