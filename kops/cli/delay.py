"""``kops delay ...``: send, inspect and cancel delayed records; run the tier forwarders.

Logic is in :mod:`kops.recipes.delay` (sending, cancel), :mod:`kops.recipes.delay.forwarder`
and :mod:`kops.recipes.delay.status`.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from rich.table import Table

from kops.cli.common import (
    DURATION,
    KEY_VALUE,
    console,
    echo_err,
    kafka_options,
    print_json,
)
from kops.cli.metrics_server import metrics_option, serve_metrics
from kops.cli.worker import jobs_table, logging_options, metrics_announcer, serve, setup_logging
from kops.client import (
    ClientSettings,
    ErrorWatch,
    KopsClientError,
    UnknownTopic,
    fetch_metadata,
    record_too_large,
    translate_error,
)
from kops.consume import format_timestamp
from kops.produce import DeliveryTracker
from kops.recipes import headers as h
from kops.recipes.delay import (
    CANCEL_TOPIC,
    DEFAULT_TEMPLATE,
    DLQ_TOPIC,
    FORWARDER_GROUP,
    STATS_TOPIC,
    DelayTiers,
    cancel_delayed,
    ensure_tier_topics,
    send_delayed,
)
from kops.timeparse import DurationNotInstant, parse_instant
from kops.worker import JobSpec, Schedule, Worker

F = TypeVar("F", bound=Callable[..., Any])


class _InstantType(click.ParamType):
    """An absolute time (ISO-8601 or epoch ms) as epoch ms; a duration is refused."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        try:
            return parse_instant(str(value))
        except DurationNotInstant as exc:
            text = str(value).strip()
            self.fail(f"{exc}; for a delay use --in {text} (or --delay {text})", param, ctx)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


INSTANT = _InstantType()


def tier_options(f: F) -> F:
    """``--tiers``, ``--template`` and ``--max-delay``; the command receives ``tiers``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        spec, template, max_delay = (
            kwargs.pop("tiers_spec"), kwargs.pop("template"), kwargs.pop("max_delay")
        )  # fmt: skip
        try:
            kwargs["tiers"] = DelayTiers.parse(spec, template=template, max_delay=max_delay)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return f(*args, **kwargs)

    out: Callable[..., Any] = wrapper
    for opt in reversed(
        [
            click.option(
                "--tiers",
                "tiers_spec",
                envvar="KOPS_DELAY_TIERS",
                default=None,
                metavar="1s,5s,...",
                help="Delay tiers (env KOPS_DELAY_TIERS) [default: 1s,5s,10s,30s,1m..10m,20m,30m,1h,2h].",
            ),
            click.option(
                "--template",
                envvar="KOPS_DELAY_TEMPLATE",
                default=DEFAULT_TEMPLATE,
                show_default=True,
                help="Tier topic names; {tier} is the tier (1s, 5m...), e.g. topic_{tier}.",
            ),
            click.option(
                "--max-delay",
                type=DURATION,
                default="24h",
                show_default=True,
                help="Longest delay accepted (longer than the largest tier cascades).",
            ),
        ]
    ):
        out = opt(out)
    return out  # type: ignore[return-value]


def _producer(settings: ClientSettings, watch: ErrorWatch) -> Producer:
    return Producer(settings.producer_config(watch, **{"enable.idempotence": True}))


@click.group()
def delay() -> None:
    """Delay queue on tier topics: send records to be delivered later, cancel, monitor.

    A record sent with a delay waits in the largest tier topic (kops.delay.1s ... 2h) not
    longer than its delay; `kops delay worker` (or `kops up`) forwards it when it is due,
    never earlier.
    """


@delay.command("send")
@click.argument("topic")
@click.option(
    "--in",
    "--delay",
    "delay_s",
    type=DURATION,
    default=None,
    help="Deliver after this long: 30s, 5m, 1h30m.",
)
@click.option(
    "--at",
    "at_ms",
    type=INSTANT,
    default=None,
    help="Deliver at this point in time: ISO-8601 (2030-01-01T09:00:00Z; UTC if no offset) "
    "or epoch ms.",
)
@click.option(
    "--allow-past",
    is_flag=True,
    help="Accept an --at in the past (the records are delivered at once).",
)
@click.option(
    "--check-target/--no-check-target",
    default=True,
    show_default=True,
    help="Refuse when TOPIC does not exist. Skip the check for a topic created later; a "
    "record whose topic is missing when due goes to the delay dead-letter topic.",
)
@click.option("--key", "-k", default=None, help="Key for every record.")
@click.option(
    "--header",
    "-H",
    "headers",
    type=KEY_VALUE,
    multiple=True,
    help="Header for every record, e.g. --header source=cli (repeatable).",
)
@tier_options
@kafka_options()
def send(
    *,
    topic: str,
    delay_s: float | None,
    at_ms: int | None,
    allow_past: bool,
    check_target: bool,
    key: str | None,
    headers: tuple[tuple[str, str], ...],
    tiers: DelayTiers,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Send one record per stdin line to TOPIC, delivered after --in or at --at.

    Prints each record's message id (for `kops delay cancel`) on stdout. Creates missing
    tier topics; TOPIC must exist (unless --no-check-target). --at is a point in time and
    must not be in the past (unless --allow-past). A full local producer queue is waited
    out; if any record is not delivered the command exits 1 saying how many.

    \b
    Examples:
      echo '{"order": 42}' | kops delay send orders.check --in 30m --key 42
      kops delay send reminders --at 2030-01-01T09:00:00Z < lines.txt
    """
    if (delay_s is None) == (at_ms is None):
        raise click.UsageError("give exactly one of --in/--delay and --at")
    if at_ms is not None and not allow_past:
        now_ms = int(time.time() * 1000)
        if at_ms < now_ms:
            raise click.UsageError(
                f"--at {format_timestamp(at_ms)} is in the past "
                f"({(now_ms - at_ms) / 1000:.0f}s ago); pass --allow-past to deliver at once"
            )
    deliver_at = datetime.fromtimestamp(at_ms / 1000, UTC) if at_ms is not None else None
    watch = ErrorWatch(settings.bootstrap)
    producer = _producer(settings, watch)
    if check_target:
        try:
            fetch_metadata(producer, watch, settings.timeout, topic)  # fails fast when missing
        except UnknownTopic as exc:
            raise UnknownTopic(
                f"{exc}; create it with `kops topic create {topic}`, or pass --no-check-target "
                "to send to a topic created before the records are due",
                code=exc.code,
            ) from exc
    ensure_tier_topics(settings, tiers)
    if sys.stdin.isatty():
        echo_err(f"reading records for {topic} from stdin, one per line; Ctrl-D to finish")
    failed_ids: set[str] = set()

    def note_failure(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed_ids.add(h.get(msg.headers(), h.MESSAGE_ID) or "")

    tracker = DeliveryTracker(then=note_failure)
    ids = []
    for raw in sys.stdin.buffer:
        value = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            msg_id = send_delayed(
                producer, topic, value,
                key=key.encode() if key is not None else None,
                headers=[(k, v.encode()) for k, v in headers],
                delay=delay_s, deliver_at=deliver_at, tiers=tiers, on_delivery=tracker,
                check_target=False,  # checked once above
            )  # fmt: skip
        except ValueError as exc:
            tracker.flush(producer, max(settings.timeout, 30))
            raise click.ClickException(str(exc)) from None
        except KafkaException as exc:
            tracker.flush(producer, max(settings.timeout, 30))
            if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                size = len(value) + len(key or "")
                raise record_too_large(topic, settings=settings, size=size) from exc
            raise translate_error(exc, "send", topic) from exc
        tracker.sent()
        ids.append(msg_id)
        producer.poll(0)
    undelivered = tracker.flush(producer, max(settings.timeout, 30))
    scheduled = [i for i in ids if i not in failed_ids] if undelivered else ids
    if as_json:
        print_json({"topic": topic, "message_ids": scheduled}, compact=False)
    else:
        for msg_id in scheduled:
            click.echo(msg_id)
    if undelivered:
        raise KopsClientError(tracker.summary())
    when = f"in {delay_s:g}s" if delay_s is not None else f"at {format_timestamp(at_ms)}"
    echo_err(f"scheduled {len(ids)} record{'s' * (len(ids) != 1)} for {topic} {when}")


@delay.command("cancel")
@click.argument("message_ids", nargs=-1, required=True)
@click.option("--cancel-topic", default=CANCEL_TOPIC, show_default=True, help="Cancel topic.")
@kafka_options()
def cancel(
    *, message_ids: tuple[str, ...], cancel_topic: str, settings: ClientSettings, as_json: bool
) -> None:
    """Cancel pending delayed records by message id: they will never be delivered.

    A cancel acknowledged before a record's due time always wins. Cancelling an id that is
    unknown or already delivered does nothing.
    """
    watch = ErrorWatch(settings.bootstrap)
    producer = _producer(settings, watch)
    fetch_metadata(producer, watch, settings.timeout, cancel_topic)
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(f"{err.str()} ({err.name()})")

    for msg_id in message_ids:
        cancel_delayed(producer, msg_id, cancel_topic=cancel_topic, on_delivery=on_delivery)
    left = producer.flush(max(settings.timeout, 30))
    if left or errors:
        raise KopsClientError(f"cancel failed: {errors[0] if errors else 'not acknowledged'}")
    if as_json:
        print_json({"cancelled": list(message_ids)})
    else:
        for msg_id in message_ids:
            echo_err(f"cancelled {msg_id}")


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value}"


@delay.command("status")
@click.option("--group", default=FORWARDER_GROUP, show_default=True, help="Forwarders' group.")
@click.option("--stats-topic", default=STATS_TOPIC, show_default=True, help="Stats topic.")
@tier_options
@kafka_options()
def status(
    *, group: str, stats_topic: str, tiers: DelayTiers, settings: ClientSettings, as_json: bool
) -> None:
    """Per tier: pending records, oldest due time, and lateness p50/p99 of recent deliveries.

    Pending is end offset - committed offset of the forwarders' group. Lateness (delivery
    time - due time) comes from the stats the running forwarders publish every few seconds
    to kops.delay.stats; a tier's lateness is counted where records leave for their target.
    """
    from kops.recipes.delay.status import delay_status

    rows = delay_status(settings, tiers, group=group, stats_topic=stats_topic)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    table = Table(box=None, pad_edge=False)
    for col, justify in (
        ("TIER", "left"), ("TOPIC", "left"), ("PENDING", "right"), ("OLDEST DUE", "left"),
        ("DELIVERED", "right"), ("LATE P50 MS", "right"), ("LATE P99 MS", "right"),
    ):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        if not r.exists:
            table.add_row(r.tier, r.topic, "-", "(no topic)", "-", "-", "-")
            continue
        due = format_timestamp(r.oldest_due_ms) if r.oldest_due_ms is not None else "-"
        table.add_row(
            r.tier, r.topic, str(r.pending), due, str(r.delivered),
            _ms(r.lateness_p50_ms), _ms(r.lateness_p99_ms),
        )  # fmt: skip
    console().print(table)
    if not any(r.forwarders for r in rows):
        echo_err("no recent forwarder stats: is `kops delay worker` (or `kops up`) running?")


@delay.command("worker")
@click.option("--group", default=FORWARDER_GROUP, show_default=True, help="Forwarders' group.")
@click.option(
    "--instance-id",
    default=None,
    help="Static group membership id: a restarted worker takes its partitions back at once.",
)
@click.option("--cancel-topic", default=CANCEL_TOPIC, show_default=True, help="Cancel topic.")
@click.option("--stats-topic", default=STATS_TOPIC, show_default=True, help="Stats topic.")
@click.option(
    "--dlq-topic",
    default=DLQ_TOPIC,
    show_default=True,
    help="Dead-letter topic for records their target cannot take (missing topic, too "
    "large); '' retries them instead.",
)
@click.option(
    "--stats-interval",
    type=DURATION,
    default="10s",
    show_default=True,
    help="How often lateness stats are published.",
)
@click.option(
    "--exactly-once",
    is_flag=True,
    help="Forward and commit each round in one transaction: never forwarded twice "
    "(needs brokers with transactions; use --instance-id for instant takeover after a crash).",
)
@metrics_option
@logging_options("INFO")
@tier_options
@kafka_options()
def worker(
    *,
    metrics: tuple[str, int] | None,
    group: str,
    instance_id: str | None,
    cancel_topic: str,
    stats_topic: str,
    dlq_topic: str,
    stats_interval: float,
    exactly_once: bool,
    log_level: str,
    tiers: DelayTiers,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Run the tier forwarders (one consumer per tier) until SIGTERM/Ctrl-C.

    On SIGTERM or Ctrl-C the forwarders commit, close (leaving the group) and the command
    exits 143 (SIGTERM) or 130 (Ctrl-C).

    Run several for more throughput or availability: they share the tiers' partitions in
    one consumer group. The same as a recipe file with one `delay-forwarders` job.

    --metrics HOST:PORT serves Prometheus metrics (lateness, forwarded and parked records
    per tier, the forwarders' consumer lag) at http://HOST:PORT/metrics.
    """
    setup_logging(log_level)
    options: dict[str, Any] = {
        "tiers": [t for t in tiers.describe().split(",")],
        "template": tiers.template,
        "max_delay": tiers.max_delay,
        "group": group,
        "cancel_topic": cancel_topic,
        "stats_topic": stats_topic,
        "dlq_topic": dlq_topic,
        "stats_interval": stats_interval,
    }
    if instance_id:
        options["instance_id"] = instance_id
    if exactly_once:
        options["exactly_once"] = True
    w = Worker(
        [JobSpec("delay-forwarders", "delay-forwarders", Schedule(), options)],
        settings,
        lag_exporter=metrics is not None,
    )

    def started(w: Worker) -> None:  # `url` is bound by the `with` below before it runs
        if as_json:
            out: dict[str, Any] = {"bootstrap": settings.bootstrap, "jobs": w.describe()}
            if url:
                out["metrics"] = url
            print_json(out, compact=True)
        else:
            console().print(
                f"kops delay worker: tiers {tiers.describe()} against {settings.bootstrap}"
            )
            console().print(jobs_table(w))
        sys.stdout.flush()

    with serve_metrics(metrics, metrics_announcer(as_json)) as url:
        code = serve(w, on_started=started)
    if code is not None:
        sys.exit(code)  # 143 after SIGTERM, 130 after Ctrl-C: stopped cleanly
