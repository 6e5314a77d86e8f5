"""``kops group ...``: list, describe, delete consumer groups. Logic is in kops.groups."""

from __future__ import annotations

from collections import defaultdict

import click
from rich.table import Table

from kops import groups as lib
from kops.cli.common import console, echo_err, kafka_options, print_json
from kops.client import ClientSettings, KopsClientError
from kops.recipes.offsets import MemberInfo


def _fmt(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _assignment(member: MemberInfo) -> str:
    """``orders(0,2) payments(1)``, Kafka's tool style."""
    by_topic: dict[str, list[int]] = defaultdict(list)
    for topic, partition in sorted(member.assignment):
        by_topic[topic].append(partition)
    return " ".join(f"{t}({','.join(map(str, ps))})" for t, ps in by_topic.items()) or "-"


@click.group()
def group() -> None:
    """List, describe and delete consumer groups."""


@group.command("list")
@click.option(
    "--state",
    "-s",
    "states",
    multiple=True,
    type=click.Choice(lib.GROUP_STATES, case_sensitive=False),
    help="Only groups in this state (repeatable).",
)
@kafka_options()
def list_(*, states: tuple[str, ...], settings: ClientSettings, as_json: bool) -> None:
    """List consumer groups: state, protocol and number of members."""
    listed = lib.list_groups(settings, states)
    if as_json:
        print_json([g.to_dict() for g in listed])
        return
    table = Table(box=None, pad_edge=False)
    for col in ("GROUP", "STATE", "TYPE", "PROTOCOL", "MEMBERS"):
        table.add_column(col, justify="right" if col == "MEMBERS" else "left")
    for g in listed:
        table.add_row(g.group, g.state, _fmt(g.protocol_type), _fmt(g.protocol), str(g.members))
    console().print(table)
    if not listed:
        echo_err("no consumer groups" + (" in that state" if states else ""))


@group.command("describe")
@click.argument("group_id", metavar="GROUP")
@kafka_options()
def describe(*, group_id: str, settings: ClientSettings, as_json: bool) -> None:
    """Show GROUP's members and, per partition, committed offset, log end offset and lag.

    Lag is log end offset (high watermark) - committed offset; '-' where the group has
    never committed. An unknown group is an error (Kafka describes it as Dead).
    """
    desc = lib.describe_group(settings, group_id)
    if as_json:
        print_json(desc.to_dict())
        return
    s = desc.summary
    out = console()
    protocol = "/".join(p for p in (s.protocol_type, s.protocol) if p) or "-"
    out.print(
        f"Group: {s.group}   State: {s.state}   Protocol: {protocol}   Members: {s.members}"
        f"   Coordinator: {_fmt(s.coordinator)}   Total lag: {desc.total_lag}"
    )
    if desc.members:
        members = Table(box=None, pad_edge=False)
        for col in ("MEMBER-ID", "CLIENT-ID", "HOST", "ASSIGNMENT"):
            members.add_column(col)
        for m in desc.members:
            members.add_row(m.member_id, _fmt(m.client_id), _fmt(m.host), _assignment(m))
        out.print()
        out.print(members)
    if desc.partitions:
        parts = Table(box=None, pad_edge=False)
        for col in ("TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "CLIENT-ID", "MEMBER-ID"):
            parts.add_column(
                col,
                justify="right" if col in ("PARTITION", "COMMITTED", "LOG-END", "LAG") else "left",
            )
        for p in desc.partitions:
            owner = desc.owner(p.topic, p.partition)
            parts.add_row(
                p.topic,
                str(p.partition),
                _fmt(p.committed),
                _fmt(p.log_end),
                _fmt(p.lag),
                _fmt(owner.client_id) if owner else "-",
                owner.member_id if owner else "-",
            )
        out.print()
        out.print(parts)
    if s.state == "Empty":
        echo_err(f"consumer group {s.group} has no active members")
    elif s.state in ("PreparingRebalance", "CompletingRebalance"):
        echo_err(f"warning: consumer group {s.group} is rebalancing: assignments are not known")
    if not desc.partitions:
        echo_err(f"consumer group {s.group} has no committed offsets and no assignment")


@group.command("delete")
@click.argument("group_ids", metavar="GROUP...", nargs=-1, required=True)
@kafka_options(json_output=False)
def delete(*, group_ids: tuple[str, ...], settings: ClientSettings) -> None:
    """Delete consumer groups and their committed offsets.

    A group can only be deleted once it has no active members. Each group is deleted on its
    own: the others still go when one fails, and the exit status is 1 if any failed.
    """
    outcome = lib.delete_groups(settings, group_ids)
    failed = {g: err for g, err in outcome.items() if err is not None}
    for g, err in outcome.items():
        if err is None:
            echo_err(f"deleted consumer group {g}")
    if len(failed) == 1:
        raise next(iter(failed.values()))
    if failed:
        reasons = "; ".join(str(err) for err in failed.values())
        raise KopsClientError(f"{len(failed)} of {len(outcome)} groups not deleted: {reasons}")
