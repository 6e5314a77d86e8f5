"""`kops broker ...`: run the bundled broker."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from kops.broker.broker import DEFAULT_DATA_DIR, Broker


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _settings(values: tuple[str, ...]) -> dict[str, str]:
    settings = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--config")
        settings[key.strip()] = value.strip()
    return settings


@click.group()
def broker() -> None:
    """Run the bundled Kafka-compatible broker."""


@broker.command()
@click.option(
    "--listen",
    default="127.0.0.1:9092",
    show_default=True,
    help="HOST:PORT to accept clients on; port 0 picks a free port.",
)
@click.option(
    "--advertise",
    default=None,
    help="HOST:PORT given to clients in metadata (default: the listen address).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    envvar="KOPS_DATA_DIR",
    help="Where partitions, offsets and metadata are stored.",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Broker setting, Kafka names (repeatable).",
)
@click.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free "
    "port; the URL is printed). Off by default.",
)
@click.option(
    "--node-id",
    type=click.IntRange(min=0),
    default=None,
    help="This broker's id in a cluster (Kafka's node.id; default 0).",
)
@click.option(
    "--quorum",
    default=None,
    metavar="ID@HOST:PORT,...",
    help="The controller quorum's voters, this broker among them (Kafka's "
    "controller.quorum.voters). Each broker serves clients and the quorum on its one "
    "listener. Without it, a single broker.",
)
@click.option("--log-level", default="INFO", show_default=True, help="Logging level for stderr.")
def start(
    listen: str,
    advertise: str | None,
    data_dir: Path,
    configs: tuple[str, ...],
    metrics: str | None,
    node_id: int | None,
    quorum: str | None,
    log_level: str,
) -> None:
    """Start a broker in the foreground; stop it with Ctrl-C or SIGTERM.

    A stop is clean (segments flushed, clean-shutdown marker written) and exits 130 after
    Ctrl-C, 143 after SIGTERM (128 + the signal), like every long-running kops command.

    With --quorum the brokers elect a controller among themselves by Raft (KRaft's Vote,
    BeginQuorumEpoch, EndQuorumEpoch, Fetch and DescribeQuorum) and re-elect when it dies.
    Partitions are replicated (replication.factor); the controller moves leadership, and
    the group and transaction coordinators with it, when a broker dies.
    """
    from kops.broker.cluster.voters import QuorumError
    from kops.broker.metrics import MetricsBindError
    from kops.broker.runner import serve_forever

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    host, port = _host_port(listen)
    advertised = _host_port(advertise) if advertise else None
    settings = _settings(configs)
    if node_id is not None:
        settings["node.id"] = str(node_id)
    if quorum is not None:
        settings["controller.quorum.voters"] = quorum
    metrics_address = _host_port(metrics) if metrics else None

    def announce(running: Broker) -> None:
        # BrokerProcess reads these two lines, in this order, to know the broker is up.
        click.echo(f"kops broker listening on {host}:{running.port}")
        if running.metrics.url is not None:
            click.echo(f"metrics on {running.metrics.url}")
        sys.stdout.flush()

    try:
        signum = serve_forever(
            data_dir,
            host,
            port,
            advertise=advertised,
            config=settings,
            metrics=metrics_address,
            on_listening=announce,
        )
    except QuorumError as exc:
        raise click.ClickException(str(exc)) from None
    except MetricsBindError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    raise click.exceptions.Exit(128 + signum)  # 143 after SIGTERM, 130 after Ctrl-C
