"""``kops produce TOPIC``: one record per stdin line. Logic is in kops.produce."""

from __future__ import annotations

import sys

import click

from kops.cli.common import KEY_VALUE, echo_err, kafka_options
from kops.client import ClientSettings
from kops.produce import InputError, produce_records, records_from_lines


@click.command("produce")
@click.argument("topic")
@click.option("--key", "-k", default=None, help="Use this key for every record.")
@click.option(
    "--key-separator",
    "-K",
    default=None,
    metavar="SEP",
    help="Each line is KEY<SEP>VALUE, split at the first SEP.",
)
@click.option(
    "--header",
    "-H",
    "headers",
    type=KEY_VALUE,
    multiple=True,
    help="Add a header to every record, e.g. --header source=backfill (repeatable).",
)
@click.option(
    "--partition",
    "-p",
    type=click.IntRange(min=0),
    default=None,
    help="Send every record to this partition [default: by key hash, or spread when keyless].",
)
@kafka_options(json_output=False)
def produce(
    *,
    topic: str,
    key: str | None,
    key_separator: str | None,
    headers: tuple[tuple[str, str], ...],
    partition: int | None,
    settings: ClientSettings,
) -> None:
    """Produce one record per line of stdin to TOPIC.

    Waits for every record to be acknowledged by all in-sync replicas (acks=all). The topic
    must exist. Prints "produced N records to TOPIC" on stderr; exits 1 naming the number of
    records not delivered if any failed. A full local queue is waited out, never dropped.

    \b
    Examples:
      echo hello | kops produce orders
      printf 'k1:v1\\nk2:v2\\n' | kops produce orders --key-separator :
    """
    if key is not None and key_separator is not None:
        raise click.UsageError("--key and --key-separator cannot be used together")
    if key_separator == "":
        raise click.UsageError("--key-separator must not be empty")
    if sys.stdin.isatty():
        echo_err(f"reading records for {topic} from stdin, one per line; Ctrl-D to finish")
    try:
        records = records_from_lines(
            sys.stdin.buffer,
            key=key.encode() if key is not None else None,
            key_separator=key_separator.encode() if key_separator is not None else None,
            headers=[(k, v.encode()) for k, v in headers],
            partition=partition,
        )
        report = produce_records(settings, topic, records)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    noun = "record" if report.delivered == 1 else "records"
    echo_err(f"produced {report.delivered} {noun} to {topic}")
    if report.input_error:
        raise click.ClickException(f"{report.input_error} (stopped reading input there)")
    if not report.ok:
        raise click.ClickException(report.summary() or "some records were not delivered")
