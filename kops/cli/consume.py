"""``kops consume TOPIC``: print records. Logic is in kops.consume."""

from __future__ import annotations

import click

from kops.cli.common import (
    DURATION,
    TIMESTAMP,
    echo_err,
    graceful_stop,
    kafka_options,
    parse_int_list,
    print_json,
)
from kops.client import ClientSettings
from kops.consume import ConsumedRecord, StartAt, format_timestamp
from kops.consume import consume as consume_records


def _parse_partitions(values: tuple[str, ...]) -> list[int]:
    if not values:
        return []
    try:
        return parse_int_list(",".join(values))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--partition'") from None


def _text(data: bytes | None) -> str:
    return "null" if data is None else data.decode("utf-8", errors="replace")


def format_record(rec: ConsumedRecord) -> str:
    """One line for people; bytes shown as UTF-8 with undecodable bytes replaced."""
    headers = ",".join(f"{k}={_text(v)}" for k, v in rec.headers) or "-"
    return (
        f"offset={rec.offset} partition={rec.partition} "
        f"timestamp={format_timestamp(rec.timestamp)} key={_text(rec.key)} "
        f"headers={headers} value={_text(rec.value)}"
    )


@click.command("consume")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained record.")
@click.option(
    "--offset",
    "-o",
    type=int,
    default=None,
    help="Start at this offset in every selected partition; negative N = the last N records.",
)
@click.option(
    "--timestamp",
    "-t",
    type=TIMESTAMP,
    default=None,
    help="Start at the first record at or after this time: ISO-8601 (2024-05-01T12:00:00Z, "
    "UTC if no offset), epoch ms, or a duration ago (15m, 2h).",
)
@click.option(
    "--partition",
    "-p",
    "partitions",
    multiple=True,
    metavar="P[,P...]",
    help="Read only these partitions (repeatable or comma-separated) [default: all].",
)
@click.option(
    "--max-messages", "-n", type=click.IntRange(min=1), default=None, help="Stop after N records."
)
@click.option(
    "--timeout",
    "idle_timeout",
    type=DURATION,
    default=None,
    help="Stop after this long with no new record, e.g. 5, 10s, 2m [default: never].",
)
@click.option(
    "--exit-at-end",
    "-e",
    is_flag=True,
    help="Stop once every partition has been read up to its end.",
)
@click.option(
    "--group",
    "-g",
    default=None,
    help="Consume as this consumer group and commit offsets of printed records "
    "[default: no group, nothing committed].",
)
@kafka_options()
def consume(
    *,
    topic: str,
    from_beginning: bool,
    offset: int | None,
    timestamp: int | None,
    partitions: tuple[str, ...],
    max_messages: int | None,
    idle_timeout: float | None,
    exit_at_end: bool,
    group: str | None,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Print records from TOPIC.

    Starts at the end (new records only) unless --from-beginning, --offset or --timestamp is
    given; with --group and none of those it resumes from the group's committed offsets
    (--from-beginning then only applies when the group has none, as in Kafka's console
    consumer). Runs until Ctrl-C or SIGTERM (exit 130 / 143, offsets of printed records
    committed) unless --max-messages, --timeout or --exit-at-end stops it.

    Output per record: offset, partition, timestamp (UTC), key, headers, value, with bytes
    shown as UTF-8. With --json, one JSON object per line with topic, partition, offset,
    timestamp (epoch ms), timestamp_type, key, headers (list of {key, value}), value; keys,
    values and header values are UTF-8 strings, or base64 when not valid UTF-8 (their
    *_encoding field says "utf-8" or "base64"; null for a null key or value).
    """
    if group is not None and not group.strip():
        # Kafka's console consumer would silently consume without a group here;
        # an empty id is almost always an unset shell variable.
        raise click.UsageError(
            "--group must not be empty (leave it out to consume without a group)"
        )
    chosen = [
        name
        for name, used in (
            ("--from-beginning", from_beginning and not group),
            ("--offset", offset is not None),
            ("--timestamp", timestamp is not None),
        )
        if used
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be used together")
    if group and from_beginning and (offset is not None or timestamp is not None):
        raise click.UsageError("--from-beginning cannot be combined with --offset/--timestamp")

    start: StartAt
    if offset is not None:
        start = StartAt.offset(offset)
    elif timestamp is not None:
        start = StartAt.timestamp(timestamp)
    elif group:
        start = StartAt.committed("earliest" if from_beginning else "latest")
    elif from_beginning:
        start = StartAt.beginning()
    else:
        start = StartAt.end()

    count = 0
    # SIGTERM or Ctrl-C set the stop event; the generator sees it between records (never
    # while one is being printed or its offset stored), so every printed record's offset
    # is stored and closing the consumer commits them (with --group) and leaves the group.
    # Then exit 143 (SIGTERM) or 130 (Ctrl-C).
    with graceful_stop(exit_on_signal=False) as stop:
        records = consume_records(
            settings,
            topic,
            start=start,
            partitions=_parse_partitions(partitions) or None,
            group=group,
            max_messages=max_messages,
            idle_timeout=idle_timeout,
            stop_at_end=exit_at_end,
            on_unreachable=lambda reason: echo_err(f"warning: {reason}"),
            stop=stop.event,
        )
        try:
            for rec in records:
                if as_json:
                    print_json(rec.to_json(), compact=True)
                else:
                    click.echo(format_record(rec))
                count += 1
        finally:
            records.close()
    echo_err(f"consumed {count} record{'s' * (count != 1)} from {topic}")
    stop.exit_if_stopped()
