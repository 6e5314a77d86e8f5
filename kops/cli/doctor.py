"""``kops doctor``: check a cluster's topics and a client config for loss, duplicates and order.
The rules are in kops.recipes.doctor."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Group
from rich.table import Table

from kops.cli.common import DURATION, console, echo_err, kafka_options, print_json
from kops.client import ClientSettings
from kops.errors import KopsError
from kops.recipes.delay.tiers import DEFAULT_TEMPLATE
from kops.recipes.doctor import (
    RULES,
    DoctorOptions,
    DoctorReport,
    Finding,
    connection_config,
    diagnose,
    load_sweep,
    parse_properties,
)


class DoctorInputError(KopsError):
    """An unreadable --client-config-file or --sweep file."""


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DoctorInputError(f"cannot read {what} {path}: {exc}") from None


def _tables(findings: list[Finding]) -> Group:
    tables = []
    for severity in ("error", "warning"):
        rows = [f for f in findings if f.severity == severity]
        if not rows:
            continue
        title = f"{len(rows)} {severity}{'s' * (len(rows) != 1)}"
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in ("RULE", "SUBJECT", "PROBLEM", "FIX"):
            table.add_column(col, overflow="fold")
        for f in rows:
            table.add_row(f.rule, f.subject, f.message, f.fix)
        tables.append(table)
    return Group(*tables)


def _summary(report: DoctorReport) -> str:
    topics = len(report.topics_checked)
    client = "/".join(report.client_roles) if report.client_roles else "none given"
    return (
        f"checked {topics} topic{'s' * (topics != 1)} on a cluster of {report.brokers} "
        f"broker{'s' * (report.brokers != 1)}; client config: {client}"
    )


@click.command("doctor")
@click.option(
    "--client-config-file",
    "-F",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Producer/consumer config to check, Java .properties (key=value lines); -X "
    "settings are checked too and win. Only -X is used to connect.",
)
@click.option(
    "--topic",
    "-t",
    "topics",
    multiple=True,
    metavar="TOPIC",
    help="Check these topics only (repeatable) [default: every non-internal topic].",
)
@click.option(
    "--sweep",
    "sweep_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="A `kops bench sweep -t MB/s --json` result: each --topic must have at least the "
    "partitions it recommends.",
)
@click.option(
    "--dlq-replay-window",
    type=DURATION,
    default="7d",
    show_default=True,
    help="How long dead letters must stay replayable: DLQ topics keeping less are reported.",
)
@click.option(
    "--delay-template",
    default=DEFAULT_TEMPLATE,
    show_default=True,
    help="Name template of the delay tier topics (as `kops delay` is given it).",
)
@click.option(
    "--client-library",
    type=click.Choice(["librdkafka", "java"]),
    default="librdkafka",
    show_default=True,
    help="Whose defaults apply to settings the client config leaves out (librdkafka: "
    "confluent-kafka, kcat, kops; java: the Apache Kafka Java client 3.0+).",
)
@click.option(
    "--ignore",
    type=click.Choice(RULES),
    multiple=True,
    metavar="RULE",
    help="Skip a rule (repeatable), e.g. --ignore replication-factor on a one-broker "
    "development cluster.",
)
@kafka_options()
def doctor(
    *,
    config_file: str | None,
    topics: tuple[str, ...],
    sweep_file: str | None,
    dlq_replay_window: float,
    delay_template: str,
    client_library: str,
    ignore: tuple[str, ...],
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Check topics, brokers and a client config against the rules for loss, duplicates
    and order; print each problem with what to change.

    Producer rules (acks, enable.idempotence, max.in.flight.requests.per.connection,
    retries) run when the client config has a producer setting, the consumer rule
    (enable.auto.commit with at-least-once processing) when it has group.id or a consumer
    setting. Topic and broker rules: replication factor, min.insync.replicas,
    unclean.leader.election.enable, delay tier and DLQ retention, __consumer_offsets
    replication, and partitions against --sweep.

    Exit status: 1 when any problem is found (warnings included), 0 when none; --ignore
    RULE skips a rule. Rule ids: kops.recipes.doctor.
    """
    client_config: dict[str, str] = {}
    if config_file is not None:
        client_config.update(parse_properties(_read(config_file, "client config")))
    client_config.update(settings.config)
    sweep_partitions = None
    if sweep_file is not None:
        if not topics:
            raise click.UsageError(
                "--sweep needs --topic: the sweep ran on scratch topics, so name the topics "
                "it was for"
            )
        try:
            sweep_partitions = load_sweep(_read(sweep_file, "sweep result"))
        except ValueError as exc:
            raise DoctorInputError(f"{sweep_file}: {exc}") from None
    options = DoctorOptions(
        topics=list(topics) or None,
        dlq_replay_window=dlq_replay_window,
        delay_template=delay_template,
        sweep_partitions=sweep_partitions,
        client_library=client_library,
        ignore=frozenset(ignore),
    )
    connect = ClientSettings(settings.bootstrap, connection_config(settings.config))
    report = diagnose(connect, client_config, options)
    for note in report.notes:
        echo_err(f"note: {note}")
    if as_json:
        print_json([f.to_dict() for f in report.findings])
    elif report.ok:
        console().print(f"no problems found ({_summary(report)})")
    else:
        console().print(_tables(report.findings))
    if not report.ok:
        errors = sum(f.severity == "error" for f in report.findings)
        warnings = len(report.findings) - errors
        echo_err(
            f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}: "
            + _summary(report)
        )
        raise click.exceptions.Exit(1)
