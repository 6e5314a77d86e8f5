"""``kops produce TOPIC``: one record per stdin line. Logic is in kops.produce."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import click
from confluent_kafka import KafkaError, KafkaException

from kops.admin import auto_create_topic, topic_config
from kops.cli.common import KEY_VALUE, echo_err, kafka_options
from kops.client import ClientSettings, UnknownTopic, record_too_large, translate_error
from kops.produce import InputError, OutgoingRecord, produce_records, records_from_lines

_TOO_LARGE = f"({KafkaError(KafkaError.MSG_SIZE_TOO_LARGE).name()})"


class _Last:
    """Remembers the last record handed out (the one a failing produce() was given)."""

    def __init__(self, records: Iterable[OutgoingRecord]):
        self.records = records
        self.line = 0
        self.record: OutgoingRecord | None = None

    def __iter__(self) -> Iterator[OutgoingRecord]:
        for line, record in enumerate(self.records, start=1):
            self.line, self.record = line, record
            yield record

    def size(self) -> int | None:
        rec = self.record
        return None if rec is None else len(rec.value or b"") + len(rec.key or b"")


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
@click.option(
    "--create/--no-create",
    default=True,
    show_default=True,
    help="When TOPIC does not exist, let the broker create it, as a Kafka producer does on "
    "first use (a broker with auto.create.topics.enable=true does). --no-create refuses a "
    "missing TOPIC.",
)
@kafka_options(json_output=False)
def produce(
    *,
    topic: str,
    key: str | None,
    key_separator: str | None,
    headers: tuple[tuple[str, str], ...],
    partition: int | None,
    create: bool,
    settings: ClientSettings,
) -> None:
    """Produce one record per line of stdin to TOPIC.

    Waits for every record to be acknowledged by all in-sync replicas (acks=all). A missing
    TOPIC is created by the broker if it auto-creates topics (Kafka's default; the bundled
    broker's too), else refused, as with --no-create. Prints "produced N records to TOPIC"
    on stderr; exits 1 naming the number of records not delivered if any failed. A full
    local queue is waited out, never dropped.

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
    if create and auto_create_topic(settings, topic):
        echo_err(f"topic {topic} did not exist: the broker created it (auto.create.topics.enable)")
    records = _Last(
        records_from_lines(
            sys.stdin.buffer,
            key=key.encode() if key is not None else None,
            key_separator=key_separator.encode() if key_separator is not None else None,
            headers=[(k, v.encode()) for k, v in headers],
            partition=partition,
        )
    )
    try:
        report = produce_records(settings, topic, records)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    except UnknownTopic as exc:
        if create:
            raise
        raise UnknownTopic(
            f"{exc} (--no-create); create it with `kops topic create {topic}`", code=exc.code
        ) from exc
    except KafkaException as exc:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            # Raised by produce() itself: the client's limit, not the broker's.
            too_large = record_too_large(topic, settings=settings, size=records.size())
            raise type(too_large)(
                f"line {records.line}: {too_large}; stopped reading input there",
                code=too_large.code,
            ) from exc
        raise translate_error(exc, "produce", topic) from exc
    noun = "record" if report.delivered == 1 else "records"
    echo_err(f"produced {report.delivered} {noun} to {topic}")
    if report.input_error:
        raise click.ClickException(f"{report.input_error} (stopped reading input there)")
    if not report.ok:
        summary = report.summary() or "some records were not delivered"
        if any(e.endswith(_TOO_LARGE) for e in report.errors):
            # In a delivery report: the broker refused it (the topic's max.message.bytes).
            limit = topic_config(settings, topic, "max.message.bytes")
            detail = record_too_large(topic, topic_limit=limit)
            summary = (
                f"{report.sent - report.delivered} of {report.sent} records not delivered: {detail}"
            )
        raise click.ClickException(summary)
