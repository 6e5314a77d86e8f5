"""``kops txn ...``: list, describe and abort transactions. Logic is in kops.transactions."""

from __future__ import annotations

import datetime

import click
from rich.table import Table

from kops import transactions as lib
from kops.cli.common import console, echo_err, kafka_options, print_json
from kops.client import ClientSettings


def _since(start_ms: int | None) -> str:
    if start_ms is None:
        return "-"
    opened = datetime.datetime.fromtimestamp(start_ms / 1000, tz=datetime.UTC)
    age = datetime.datetime.now(tz=datetime.UTC) - opened
    return f"{opened:%Y-%m-%d %H:%M:%S}Z ({age.total_seconds():.0f} s ago)"


def _print_detail(detail: lib.TransactionDetail) -> None:
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column()
    table.add_column()
    table.add_row("transactional id", detail.transactional_id)
    table.add_row("state", detail.state)
    table.add_row("producer", f"{detail.producer_id} (epoch {detail.producer_epoch})")
    table.add_row("timeout", f"{detail.timeout_ms} ms")
    table.add_row("open since", _since(detail.start_ms))
    table.add_row("coordinator", str(detail.coordinator))
    table.add_row("partitions", " ".join(f"{t}-{p}" for t, p in sorted(detail.partitions)) or "-")
    console().print(table)


@click.group()
def txn() -> None:
    """List, describe and abort transactions (Kafka's kafka-transactions.sh)."""


@txn.command("list")
@click.option(
    "--state",
    "-s",
    "states",
    multiple=True,
    type=click.Choice(lib.TRANSACTION_STATES, case_sensitive=False),
    help="Only transactions in this state (repeatable).",
)
@click.option(
    "--producer-id",
    "producer_ids",
    multiple=True,
    type=int,
    help="Only this producer (repeatable).",
)
@click.option(
    "--older-than",
    "min_duration_ms",
    type=click.IntRange(min=0),
    default=None,
    metavar="MS",
    help="Only transactions open at least this many milliseconds (hanging ones).",
)
@kafka_options()
def list_(
    *,
    states: tuple[str, ...],
    producer_ids: tuple[int, ...],
    min_duration_ms: int | None,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """List transactional ids: producer, state and coordinator."""
    listed = lib.list_transactions(
        settings, states, producer_ids, -1 if min_duration_ms is None else min_duration_ms
    )
    if as_json:
        print_json([t.to_dict() for t in listed])
        return
    table = Table(box=None, pad_edge=False)
    for col in ("TRANSACTIONAL ID", "PRODUCER ID", "STATE", "COORDINATOR"):
        table.add_column(col, justify="right" if col in ("PRODUCER ID", "COORDINATOR") else "left")
    for t in listed:
        table.add_row(t.transactional_id, str(t.producer_id), t.state, str(t.coordinator))
    console().print(table)
    if not listed:
        echo_err("no transactional ids" + (" matching" if states or producer_ids else ""))


@txn.command("describe")
@click.argument("transactional_id", metavar="TRANSACTIONAL_ID")
@kafka_options()
def describe(*, transactional_id: str, settings: ClientSettings, as_json: bool) -> None:
    """Show a transactional id: state, producer and epoch, open partitions."""
    detail = lib.describe_transaction(settings, transactional_id)
    if as_json:
        print_json(detail.to_dict())
        return
    _print_detail(detail)


@txn.command("abort")
@click.argument("transactional_id", metavar="TRANSACTIONAL_ID")
@kafka_options()
def abort(*, transactional_id: str, settings: ClientSettings, as_json: bool) -> None:
    """Fence the id's producer and abort its open transaction.

    For a hanging transaction holding back read_committed consumers: the producer
    using the id gets PRODUCER_FENCED on its next request, as when a new instance
    of it starts.
    """
    detail = lib.abort_transaction(settings, transactional_id)
    if as_json:
        print_json(detail.to_dict())
        return
    echo_err(f"fenced the producer of {transactional_id!r}; its open transaction is aborted")
    _print_detail(detail)
