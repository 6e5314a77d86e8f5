"""`kops cluster ...`: a bundled multi-broker cluster on one machine, and its status."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from kops.admin import (
    ClusterBroker,
    QuorumStatus,
    describe_cluster_brokers,
    describe_quorum,
    partitions_at_risk,
)
from kops.cli.common import console, echo_err, graceful_stop, kafka_options, print_json
from kops.client import ClientSettings, KopsClientError

if TYPE_CHECKING:
    from kops.broker.runner import BrokerProcess

DEFAULT_CLUSTER_DIR = Path("~/.local/share/kops/cluster").expanduser()


@click.group()
def cluster() -> None:
    """A cluster of bundled brokers: start one, see its controller quorum."""


@cluster.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CLUSTER_DIR,
    show_default=True,
    help="Each broker keeps its data in DATA_DIR/node-N.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address every broker listens on."
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535 - 9),
    default=9092,
    show_default=True,
    help="Broker N listens on BASE_PORT + N - 1.",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Broker setting for every broker, Kafka names (repeatable).",
)
@click.option(
    "--log-level", default="WARNING", show_default=True, help="The brokers' stderr log level."
)
def start(
    nodes: int,
    data_dir: Path,
    host: str,
    base_port: int,
    configs: tuple[str, ...],
    log_level: str,
) -> None:
    """Start NODES brokers as one cluster, in the foreground; Ctrl-C or SIGTERM stops them all.

    The brokers are node ids 1..NODES; every one is a voter of the controller quorum and
    serves clients on its own port. Prints `kops broker N listening on HOST:PORT` for each
    broker once it is up, then the bootstrap list.
    """
    from kops.broker.runner import BrokerStartError

    brokers = cluster_processes(nodes, data_dir, host, base_port, configs, log_level)
    ports = {node: base_port + node - 1 for node in brokers}
    try:
        with graceful_stop(exit_on_signal=False) as stop:
            for node, broker in brokers.items():
                if stop.is_set():
                    break
                try:
                    address = broker.start()
                except BrokerStartError as exc:
                    raise click.ClickException(f"broker {node}: {exc}") from None
                click.echo(f"kops broker {node} listening on {address}")
            click.echo(f"bootstrap: {','.join(f'{host}:{p}' for p in ports.values())}", color=False)
            reported: set[int] = set()
            while not stop.wait(0.5):
                for node, broker in brokers.items():
                    code = broker.exited()
                    if code is not None and node not in reported:
                        reported.add(node)
                        echo_err(f"kops cluster: broker {node} exited (code {code})")
    finally:
        for broker in brokers.values():
            broker.stop()
    stop.exit_if_stopped()


def cluster_processes(
    nodes: int,
    data_dir: Path,
    host: str,
    base_port: int,
    configs: Iterable[str],
    log_level: str,
    **process_options: Any,
) -> dict[int, BrokerProcess]:
    """Broker processes 1..NODES (not started) of one cluster: every one a voter, broker N
    on BASE_PORT + N - 1 with its data in DATA_DIR/node-N. Topics default to replication
    factor min(3, NODES) (default.replication.factor), which a --config overrides: on a
    cluster kops starts, a broker's death should not take partitions offline."""
    from kops.broker.runner import BrokerProcess

    ports = {node: base_port + node - 1 for node in range(1, nodes + 1)}
    voters = ",".join(f"{node}@{host}:{port}" for node, port in ports.items())
    settings = [f"default.replication.factor={min(3, nodes)}", *configs]
    return {
        node: BrokerProcess(
            data_dir / f"node-{node}",
            host=host,
            port=port,
            extra_args=[
                "--node-id",
                str(node),
                "--quorum",
                voters,
                "--log-level",
                log_level,
                *(arg for c in settings for arg in ("--config", c)),
            ],
            **{"stderr": None, **process_options},  # the brokers' logs go to our stderr
        )
        for node, port in ports.items()
    }


@cluster.command()
@kafka_options()
def status(settings: ClientSettings, as_json: bool) -> None:
    """The controller and its epoch, each voter's progress, the brokers (active, fenced), and
    the partitions whose ISR is short or that have no leader.

    Asks every address in --bootstrap (DescribeQuorum) and reports the leader's view;
    the brokers come from the controller's registrations (DescribeCluster).
    """
    addresses = [a.strip() for a in settings.bootstrap.split(",") if a.strip()]
    answers: dict[str, QuorumStatus] = {}
    errors: list[str] = []
    for address in addresses:
        try:
            answers[address] = describe_quorum(address, timeout=settings.timeout)
        except KopsClientError as exc:
            errors.append(str(exc))
    leader = next((s for s in answers.values() if s.error is None), None)
    if leader is None:
        known = next(iter(answers.values()), None)
        if known is None:
            raise KopsClientError(errors[0] if errors else "no broker answered")
        hint = f"node {known.leader_id}" if known.leader_id >= 0 else "none elected yet"
        raise KopsClientError(
            f"the quorum leader is not among {settings.bootstrap} (leader: {hint}, "
            f"epoch {known.leader_epoch}); pass every broker in --bootstrap"
        )
    brokers = _brokers(addresses, settings.timeout)
    try:
        total, risky = partitions_at_risk(settings)
    except KopsClientError as exc:
        total, risky = -1, []
        errors.append(f"partitions unavailable: {exc}")
    now = time.time() * 1000
    rows = [
        {
            "node": v.replica_id,
            "role": "leader" if v.replica_id == leader.leader_id else "follower",
            "log_end_offset": v.log_end_offset,
            "lag": leader.high_watermark - v.log_end_offset,
            "last_fetch_ms_ago": None
            if v.last_fetch_timestamp < 0
            else max(0, int(now - v.last_fetch_timestamp)),
        }
        for v in leader.voters
    ]
    if as_json:
        print_json(
            {
                "controller": leader.leader_id,
                "epoch": leader.leader_epoch,
                "high_watermark": leader.high_watermark,
                "voters": rows,
                "brokers": [
                    {"node": b.node_id, "address": f"{b.host}:{b.port}", "fenced": b.fenced}
                    for b in brokers
                ],
                "partitions": total,
                "partitions_at_risk": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "leader": p.leader,
                        "replicas": p.replicas,
                        "isr": p.isr,
                    }
                    for p in risky
                ],
                "unreachable": errors,
            }
        )
        return
    out = console()
    out.print(
        f"controller: node {leader.leader_id}, epoch {leader.leader_epoch}, "
        f"high watermark {leader.high_watermark}"
    )
    table = Table("node", "role", "log end offset", "lag", "last fetch")
    for row in rows:
        ago = row["last_fetch_ms_ago"]
        table.add_row(
            str(row["node"]), str(row["role"]), str(row["log_end_offset"]), str(row["lag"]),
            "-" if ago is None else f"{ago} ms ago",
        )  # fmt: skip
    out.print(table)
    brokers_table = Table("broker", "address", "state")
    for b in brokers:
        brokers_table.add_row(
            str(b.node_id), f"{b.host}:{b.port}", "fenced" if b.fenced else "active"
        )
    out.print(brokers_table)
    if risky:
        at_risk = Table("topic", "partition", "leader", "replicas", "isr", "state")
        for p in risky:
            at_risk.add_row(
                p.topic, str(p.partition), str(p.leader) if p.leader >= 0 else "-",
                ",".join(map(str, p.replicas)), ",".join(map(str, p.isr)),
                "offline" if p.offline else "under-replicated",
            )  # fmt: skip
        out.print(at_risk)
    elif total >= 0:
        out.print(f"partitions: all {total} have a leader and a full ISR")
    for error in errors:
        echo_err(f"warning: {error}")


def _brokers(addresses: list[str], timeout: float) -> list[ClusterBroker]:
    """The registered brokers, from the first broker that answers (each keeps the image)."""
    for address in addresses:
        try:
            return describe_cluster_brokers(address, timeout)[1]
        except KopsClientError:
            continue
    return []
