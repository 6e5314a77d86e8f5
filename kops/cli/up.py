"""``kops up``: the main job. The bundled broker (unless one already answers) plus the worker
running the recipe files, in the foreground; Ctrl-C or SIGTERM stops everything cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path

import click
from rich.panel import Panel
from rich.table import Table

from kops.broker.runner import BrokerProcess, BrokerStartError
from kops.cli.common import KEY_VALUE, console, echo_err, kafka_options
from kops.cli.worker import explicit_bootstrap, jobs_table, recipe_files, serve, setup_logging
from kops.client import ClientSettings
from kops.worker import RecipeError, Worker, load_recipes, parse_recipe, settings_for
from kops.worker.defaults import DEFAULT_RECIPE

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]", ""}
_REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _first_address(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise click.UsageError(f"--bootstrap: expected HOST:PORT, got {first!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def broker_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Something accepts TCP connections at host:port (a Kafka broker, we assume)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If `kops up` is killed outright, take the broker down with it (Linux only).
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()  # our own session: a terminal's Ctrl-C reaches `kops up` only, which stops
    # the worker first (its last commits need the broker) and then the broker.


def default_recipe_files() -> list[Path]:
    """./recipes/*.toml, else the kops checkout's recipes/*.toml; empty -> packaged default."""
    for directory in (Path.cwd() / "recipes", _REPO_RECIPES):
        files = sorted(directory.glob("*.toml")) if directory.is_dir() else []
        if files:
            return files
    return []


@click.command("up")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="KOPS_DATA_DIR",
    help="Broker data directory (env KOPS_DATA_DIR) [default: the broker's].",
)
@click.option(
    "--broker-config",
    "broker_configs",
    type=KEY_VALUE,
    multiple=True,
    help="Setting for a broker kops starts, Kafka names (repeatable).",
)
@click.option("--log-level", default="INFO", show_default=True, help="Logging level for stderr.")
@kafka_options(json_output=False)
def up(
    *,
    files: tuple[Path, ...],
    data_dir: Path | None,
    broker_configs: tuple[tuple[str, str], ...],
    log_level: str,
    settings: ClientSettings,
) -> None:
    """Run everything: the bundled broker and the worker with the recipe FILES.

    Starts a broker listening on --bootstrap unless one already answers there, then runs the
    jobs of FILES (default: recipes/*.toml, else a built-in delay-tiers recipe) and shows
    what is running. Ctrl-C or SIGTERM stops the worker (commits, closes consumers), then
    the broker, and exits 130 (Ctrl-C) or 143 (SIGTERM).

    \b
    Examples:
      kops up                                    # broker on 127.0.0.1:9092 + recipes/
      kops up --bootstrap 127.0.0.1:19092 --data-dir /tmp/kops recipes/delay-tiers.toml
    """
    setup_logging(log_level)
    paths = recipe_files(files) if files else default_recipe_files()
    try:
        recipes = load_recipes(paths) if paths else [parse_recipe(tomllib.loads(DEFAULT_RECIPE))]
        # A recipe file may name the cluster (kops up starts the broker there) unless
        # --bootstrap/KOPS_BOOTSTRAP is given.
        settings = settings_for(recipes, settings, explicit_bootstrap())
        # Build every job before starting anything: bad options fail fast, broker untouched.
        worker = Worker.from_recipes(recipes, settings)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None

    host, port = _first_address(settings.bootstrap)
    broker: BrokerProcess | None = None
    if broker_answers(host, port):
        broker_line = f"using the broker already at {settings.bootstrap}"
    elif host in _LOCAL_HOSTS:
        broker = BrokerProcess(
            data_dir,
            host=host,
            port=port,
            config=dict(broker_configs),
            stderr=None,  # the broker's log goes to our stderr
            preexec_fn=_die_with_parent,
        )
        try:
            address = broker.start()
        except BrokerStartError as exc:
            raise click.ClickException(str(exc)) from None
        broker_line = f"started: {address} (pid {broker.process.pid})"  # type: ignore[union-attr]
        if data_dir is not None:
            broker_line += f", data in {data_dir}"
    else:
        raise click.ClickException(
            f"no broker answers at {settings.bootstrap}, and kops up starts one only on a "
            "local address (127.0.0.1, localhost)"
        )

    def started(w: Worker) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_row("broker", broker_line)
        grid.add_row("bootstrap", settings.bootstrap)
        grid.add_row("recipes", ", ".join(str(p) for p in paths) or "(built-in delay tiers)")
        grid.add_row("jobs", jobs_table(w))
        console().print(Panel(grid, title="kops up", subtitle="Ctrl-C to stop", expand=False))
        click.echo(f"kops up: running {len(w.jobs)} job(s) against {settings.bootstrap}")
        sys.stdout.flush()

    def broker_alive() -> str | None:
        if broker is not None and (code := broker.exited()) is not None:
            return f"the bundled broker exited (code {code})"
        return None

    started_at = time.monotonic()
    try:
        code = serve(worker, on_started=started, still_ok=broker_alive)
    finally:
        if broker is not None:
            echo_err("stopping the broker...")
            broker.stop()
    echo_err(f"kops up: stopped after {time.monotonic() - started_at:.0f}s")
    if code is not None:
        sys.exit(code)  # 143 after SIGTERM, 130 after Ctrl-C: everything stopped cleanly
