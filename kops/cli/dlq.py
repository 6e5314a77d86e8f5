"""``kops dlq ...``: list, inspect, replay and purge dead-letter topics. Logic is in
kops.recipes.dlq."""

from __future__ import annotations

import click
from rich.table import Table

from kops.cli.common import TIMESTAMP, console, echo_err, kafka_options, print_json, progress_bar
from kops.client import ClientSettings
from kops.consume import decode_bytes, format_timestamp
from kops.recipes import dlq as lib


def _short(text: str | None, width: int) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


@click.group()
def dlq() -> None:
    """Dead-letter topics: list, inspect, replay, purge.

    Reads dead letters written by kops, Spring Kafka (kafka_dlt-* headers) and Kafka
    Connect (__connect.errors.* headers) alike.
    """


@dlq.command("list")
@click.option(
    "--scan/--no-scan",
    default=True,
    show_default=True,
    help="Also find topics by their newest record's dead-letter headers, not only by name "
    "(.dlq, -dlt, .DLT, ...).",
)
@kafka_options()
def list_(*, scan: bool, settings: ClientSettings, as_json: bool) -> None:
    """List dead-letter topics with their record counts."""
    topics = lib.list_dlq_topics(settings, scan_headers=scan)
    if as_json:
        print_json([t.to_dict() for t in topics])
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("TOPIC")
    table.add_column("PARTITIONS", justify="right")
    table.add_column("RECORDS", justify="right")
    table.add_column("FOUND BY")
    for t in topics:
        table.add_row(t.name, str(t.partitions), str(t.records), t.detected_by)
    console().print(table)
    if not topics:
        echo_err("no dead-letter topics")


@dlq.command("inspect")
@click.argument("topic")
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Sample records shown per exception class.",
)
@kafka_options()
def inspect(*, topic: str, samples: int, settings: ClientSettings, as_json: bool) -> None:
    """Group the dead letters of TOPIC by exception class, with samples.

    The class is the real cause: wrappers such as Spring's ListenerExecutionFailedException
    are unwrapped (kafka_dlt-exception-cause-fqcn, or the stack trace's "Caused by:").
    Samples show where each dead letter sits in TOPIC and where it was first consumed.
    """
    report = lib.inspect(settings, topic, samples=samples)
    if as_json:
        print_json(report.to_dict())
        return
    formats = ", ".join(f"{k} {v}" for k, v in report.formats.most_common())
    echo_err(
        f"{topic}: {_plural(report.total, 'dead letter')}"
        + (f" ({formats})" if formats else "")
        + f", {report.replayed} replayed"
    )
    out = console()
    table = Table(box=None, pad_edge=False)
    for col in ("EXCEPTION", "COUNT", "FIRST FAILED", "LAST FAILED", "FROM"):
        table.add_column(col, justify="right" if col == "COUNT" else "left")
    for e in report.exceptions:
        origins = ", ".join(f"{t} ({n})" for t, n in e.original_topics.most_common(3))
        table.add_row(
            e.exception_class,
            str(e.count),
            format_timestamp(e.first_failed_ms),
            format_timestamp(e.last_failed_ms),
            origins,
        )
    out.print(table)
    if samples and report.exceptions:
        out.print()
        sample_table = Table(box=None, pad_edge=False, title="samples", title_justify="left")
        for col in ("EXCEPTION", "DLQ PARTITION@OFFSET", "ORIGIN TOPIC/PARTITION@OFFSET", "KEY",
                    "ATTEMPTS", "MESSAGE"):  # fmt: skip
            sample_table.add_column(col)
        for e in report.exceptions:
            for s in e.samples:
                key, _ = decode_bytes(s.record.key)
                sample_table.add_row(
                    _short(e.exception_class, 40),
                    f"{s.record.partition}@{s.record.offset}",
                    s.origin or "-",
                    _short(key, 24),
                    "-" if s.attempts is None else str(s.attempts),
                    _short(s.exception_message, 80),
                )
        out.print(sample_table)


@dlq.command("replay")
@click.argument("topic")
@click.option(
    "--to", "to", metavar="TOPIC", help="Send here instead of each record's original topic."
)
@click.option(
    "--exception",
    metavar="NAME",
    help="Only this exception class: its qualified or simple name, any case "
    "(ValueError, java.lang.IllegalStateException). Wrapped exceptions match by their cause.",
)
@click.option("--since", type=TIMESTAMP, help="Only records that failed at or after this time.")
@click.option("--until", type=TIMESTAMP, help="Only records that failed before this time.")
@click.option("--key", metavar="KEY", help="Only records with this key (UTF-8).")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=50.0,
    show_default=True,
    help="Records per second (0 = no limit).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Replay at most this many dead letters this run (the rest of the matches are counted "
    "and left for a later run).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
@click.option(
    "--include-in-doubt",
    is_flag=True,
    help="Also replay records an interrupted run marked but may not have sent.",
)
@click.option(
    "--exactly-once",
    is_flag=True,
    help="Send each batch and its markers in one transaction (read_committed): a killed "
    "run leaves nothing in doubt and the next one resumes (needs brokers with transactions).",
)
@kafka_options()
def replay(
    *,
    topic: str,
    to: str | None,
    exception: str | None,
    since: int | None,
    until: int | None,
    key: str | None,
    rate: float,
    limit: int | None,
    dry_run: bool,
    include_in_doubt: bool,
    exactly_once: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Send the dead letters of TOPIC back to their original topic (or --to).

    Rate-limited; keys, values and original headers are kept. Each dead letter is replayed
    at most once, even across runs: replayed records are marked in the compacted topic
    TOPIC.replayed. With --exactly-once the records and their markers are written in
    transactions: exactly once for read_committed readers, even when a run is killed.
    """
    where = lib.ReplayFilter(exception=exception, since_ms=since, until_ms=until, key=key)
    with progress_bar() as bar:
        task = bar.add_task(f"{'dry run ' if dry_run else ''}replay {topic}", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = lib.replay(
            settings,
            topic,
            to=to,
            where=where,
            rate=rate or None,
            limit=limit,
            dry_run=dry_run,
            include_in_doubt=include_in_doubt,
            progress=on_progress,
            exactly_once=exactly_once,
        )
    if as_json:
        print_json(report.to_dict())
    elif dry_run and report.planned:
        table = Table(box=None, pad_edge=False)
        for col in ("DLQ PARTITION@OFFSET", "ORIGIN", "KEY", "EXCEPTION", "FAILED", "REPLAY TO"):
            table.add_column(col)
        for item in report.planned:
            table.add_row(
                f"{item['partition']}@{item['offset']}",
                item["origin"] or "-",
                _short(item["key"], 24),
                _short(item["exception_class"], 40),
                format_timestamp(item["failed_at"]),
                item["replay_to"],
            )
        console().print(table)
    echo_err(report.summary())


@dlq.command("purge")
@click.argument("topic")
@click.option("--before", type=TIMESTAMP, help="Delete dead letters older than this time.")
@click.option("--all", "purge_all", is_flag=True, help="Delete every dead letter.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@kafka_options()
def purge(
    *,
    topic: str,
    before: int | None,
    purge_all: bool,
    dry_run: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Delete dead letters from TOPIC (DeleteRecords: the log start moves forward)."""
    if (before is None) == (not purge_all):
        raise click.UsageError("give exactly one of --before TIME and --all")
    results = lib.purge(settings, topic, before_ms=before, dry_run=dry_run)
    deleted = sum(r.deleted for r in results)
    # A dry run says what would happen, in words that cannot be mistaken for a deletion.
    count_key = "would_delete" if dry_run else "deleted"
    after_key = "start_would_be" if dry_run else "start_after"
    if as_json:
        print_json(
            {
                "topic": topic,
                "dry_run": dry_run,
                count_key: deleted,
                "partitions": [
                    {
                        "partition": r.partition,
                        "start_before": r.start_before,
                        after_key: r.start_after,
                        "end": r.end,
                        count_key: r.deleted,
                    }
                    for r in results
                ],
            }
        )
        return
    table = Table(box=None, pad_edge=False)
    headings = ("START WOULD BE", "WOULD DELETE") if dry_run else ("START AFTER", "DELETED")
    for col in ("PARTITION", "START BEFORE", headings[0], "END", headings[1]):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            *(str(v) for v in (r.partition, r.start_before, r.start_after, r.end, r.deleted))
        )
    console().print(table)
    verb = "would delete" if dry_run else "deleted"
    echo_err(f"{verb} {_plural(deleted, 'dead letter')} from {topic}")
