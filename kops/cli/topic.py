"""``kops topic ...``: create, list, describe, alter, config, delete. Logic is in kops.admin."""

from __future__ import annotations

import click
from rich.table import Table

from kops import admin
from kops.broker.topic_configs import CATALOGUE
from kops.cli.common import KEY_VALUE, console, echo_err, kafka_options, print_json
from kops.client import ClientSettings, TopicAlreadyExists, UnknownTopic

# Short names for people; --json keeps Kafka's enum names.
_SOURCE_LABELS = {
    "DYNAMIC_TOPIC_CONFIG": "topic",
    "DYNAMIC_BROKER_CONFIG": "broker",
    "DYNAMIC_DEFAULT_BROKER_CONFIG": "cluster",
    "STATIC_BROKER_CONFIG": "broker-file",
    "DEFAULT_CONFIG": "default",
}


def _fmt_ids(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids) or "-"


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _kops_acts(name: str) -> bool | None:
    """Whether the bundled broker acts on topic config `name` (False: it only stores
    and reports it); None for a name outside Kafka's topic configs."""
    definition = CATALOGUE.get(name)
    return None if definition is None else definition.acted


def _kops_label(name: str) -> str:
    return {True: "acts", False: "stores", None: "-"}[_kops_acts(name)]


def _config_table(configs: list[admin.ConfigValue]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("CONFIG", "VALUE", "SOURCE", "KOPS"):
        table.add_column(column)
    for c in configs:
        value = "(sensitive)" if c.sensitive else _fmt(c.value)
        source = _SOURCE_LABELS.get(c.source, c.source.lower())
        table.add_row(c.name, value, source, _kops_label(c.name))
    return table


def _configs_json(configs: list[admin.ConfigValue]) -> dict[str, dict[str, object]]:
    return {
        c.name: {
            "value": c.value,
            "source": c.source,
            "is_default": c.is_default,
            "read_only": c.read_only,
            "sensitive": c.sensitive,
            "kops_acts": _kops_acts(c.name),
        }
        for c in configs
    }


@click.group()
def topic() -> None:
    """Create, inspect, change and delete topics."""


@topic.command("create")
@click.argument("name")
@click.option(
    "--partitions",
    "-p",
    type=click.IntRange(min=1),
    default=None,
    help="Partitions [default: the broker's num.partitions].",
)
@click.option(
    "--replication-factor",
    "-r",
    type=click.IntRange(min=1),
    default=None,
    help="Replicas per partition [default: the broker's default].",
)
@click.option(
    "--config",
    "-c",
    "configs",
    type=KEY_VALUE,
    multiple=True,
    help="Topic config, e.g. --config retention.ms=86400000 (repeatable).",
)
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic already exists.")
@kafka_options()
def create(
    *,
    name: str,
    if_not_exists: bool,
    partitions: int | None,
    replication_factor: int | None,
    configs: tuple[tuple[str, str], ...],
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Create topic NAME."""
    try:
        admin.create_topic(settings, name, partitions, replication_factor, dict(configs))
    except TopicAlreadyExists:
        if not if_not_exists:
            raise
        if as_json:
            print_json({"topic": name, "created": False})
        else:
            echo_err(f"topic {name} already exists")
        return
    if partitions is None:  # the broker chose: say what it chose
        partitions = len(admin.describe_topic(settings, name).partitions)
    if as_json:
        print_json(
            {"topic": name, "created": True, "partitions": partitions, "config": dict(configs)}
        )
    else:
        echo_err(f"created topic {name} with {partitions} partition{'s' * (partitions != 1)}")


@topic.command("list")
@click.option("--all", "-a", "show_all", is_flag=True, help="Include internal topics (__*).")
@kafka_options()
def list_(*, show_all: bool, settings: ClientSettings, as_json: bool) -> None:
    """List topics with their partition counts."""
    topics = admin.list_topics(settings, include_internal=show_all)
    if as_json:
        print_json(
            [
                {
                    "name": t.name,
                    "partitions": t.partitions,
                    "replication_factor": t.replication_factor,
                    "internal": t.internal,
                }
                for t in topics
            ]
        )
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("TOPIC")
    table.add_column("PARTITIONS", justify="right")
    table.add_column("RF", justify="right")
    for t in topics:
        table.add_row(t.name, str(t.partitions), str(t.replication_factor))
    console().print(table)
    if not topics:
        echo_err("no topics" + ("" if show_all else " (use --all to include internal topics)"))


@topic.command("describe")
@click.argument("name")
@click.option(
    "--all-configs", is_flag=True, help="Show every config, not only those set on the topic."
)
@kafka_options()
def describe(*, name: str, all_configs: bool, settings: ClientSettings, as_json: bool) -> None:
    """Show NAME's partitions (leader, leader epoch, replicas, ISR, offsets, records) and configs.

    Records per partition is end offset - log start offset: an upper bound when the topic is
    compacted or holds transaction markers. Size on disk is shown as unknown: the
    confluent-kafka admin client cannot describe log dirs.
    """
    info = admin.describe_topic(settings, name)
    if as_json:
        described = info.to_dict()
        for key, entry in (described["configs"] or {}).items():
            entry["kops_acts"] = _kops_acts(key)
        print_json(described)
        return
    out = console()
    out.print(f"Topic: {info.name}")
    if info.topic_id:
        out.print(f"ID: {info.topic_id}")
    out.print(
        f"Partitions: {len(info.partitions)}   Replication factor: {info.replication_factor}"
        f"   Records: {_fmt(info.total_records)}   Size: "
        + ("unknown" if info.size_bytes is None else f"{info.size_bytes} bytes")
    )
    table = Table(box=None, pad_edge=False)
    for col in ("PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "START", "END", "RECORDS"):
        table.add_column(col, justify="left" if col in ("REPLICAS", "ISR") else "right")
    for p in info.partitions:
        table.add_row(
            str(p.partition),
            _fmt(p.leader),
            _fmt(p.leader_epoch),
            _fmt_ids(p.replicas),
            _fmt_ids(p.isr),
            _fmt(p.start_offset),
            _fmt(p.end_offset),
            _fmt(p.records),
        )
    out.print()
    out.print(table)
    if info.configs is not None:
        shown = [c for c in info.configs if all_configs or c.source == "DYNAMIC_TOPIC_CONFIG"]
        out.print()
        if shown:
            out.print(_config_table(shown))
        else:
            out.print("Configs: all defaults (use --all-configs to list them)")
    for warning in info.warnings:
        echo_err(f"warning: {warning}")


@topic.command("alter")
@click.argument("name")
@click.option(
    "--partitions",
    "-p",
    type=click.IntRange(min=1),
    required=True,
    help="New total number of partitions (can only grow).",
)
@kafka_options(json_output=False)
def alter(*, name: str, partitions: int, settings: ClientSettings) -> None:
    """Increase NAME's partition count."""
    admin.create_partitions(settings, name, partitions)
    echo_err(f"topic {name} now has {partitions} partitions")


@topic.command("config")
@click.argument("name")
@click.option(
    "--set",
    "-s",
    "set_",
    type=KEY_VALUE,
    multiple=True,
    help="Set a config, e.g. --set retention.ms=60000 (repeatable).",
)
@click.option(
    "--delete",
    "-d",
    "delete",
    multiple=True,
    metavar="KEY",
    help="Remove a config override, reverting to the default (repeatable).",
)
@click.option(
    "--show",
    is_flag=True,
    help="List every config (after any change): value, source, and whether kops acts on it.",
)
@kafka_options()
def config(
    *,
    name: str,
    set_: tuple[tuple[str, str], ...],
    delete: tuple[str, ...],
    show: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Change NAME's configs incrementally (other configs are left alone), and/or list them.

    The KOPS column (kops_acts in --json) says what the bundled kops broker does with a
    config: "acts" on it, or only "stores" it (it is validated, kept and reported like
    Kafka's, with no effect on the log); "-" for a name that is not a Kafka topic config.
    --json implies --show.
    """
    show = show or as_json
    if not set_ and not delete and not show:
        raise click.UsageError("give at least one --set key=value or --delete key, or --show")
    overlap = {k for k, _ in set_} & set(delete)
    if overlap:
        raise click.UsageError(f"cannot both set and delete {', '.join(sorted(overlap))}")
    if set_ or delete:
        admin.alter_topic_configs(settings, name, dict(set_), delete)
        changes = [f"{k}={v}" for k, v in set_] + [f"-{k}" for k in delete]
        echo_err(f"updated topic {name}: {' '.join(changes)}")
    if not show:
        return
    info = admin.describe_topic(settings, name)
    for warning in info.warnings:
        echo_err(f"warning: {warning}")
    if info.configs is None:
        raise click.ClickException(f"the broker did not describe the configs of {name}")
    if as_json:
        print_json(_configs_json(info.configs))
    else:
        console().print(_config_table(info.configs))


@topic.command("delete")
@click.argument("name")
@click.option("--if-exists", is_flag=True, help="Succeed if the topic does not exist.")
@kafka_options(json_output=False)
def delete(*, name: str, if_exists: bool, settings: ClientSettings) -> None:
    """Delete topic NAME and all its records."""
    try:
        admin.delete_topic(settings, name)
    except UnknownTopic:
        if not if_exists:
            raise
        echo_err(f"topic {name} does not exist")
        return
    echo_err(f"deleted topic {name}")
