"""``kops up``: the main job. The bundled broker (unless one already answers) plus the worker
running the recipe files, in the foreground; Ctrl-C or SIGTERM stops everything cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path

import click
from confluent_kafka.admin import NewTopic
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from kops.broker.runner import BrokerProcess, BrokerStartError
from kops.cli.common import KEY_VALUE, console, echo_err, kafka_options
from kops.cli.metrics_server import METRICS_ADDRESS, serve_metrics
from kops.cli.worker import (
    explicit_bootstrap,
    jobs_table,
    logging_options,
    recipe_files,
    serve,
    setup_logging,
)
from kops.client import AdminSession, ClientSettings, KopsClientError
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
@click.option(
    "--metrics",
    type=METRICS_ADDRESS,
    default="127.0.0.1:0",
    show_default=True,
    envvar="KOPS_METRICS",
    help="Serve the worker's Prometheus metrics (and export consumer lag) at "
    "http://HOST:PORT/metrics (env KOPS_METRICS; port 0: a free one); a broker kops up "
    "starts serves its own on a free loopback port. Both URLs are printed.",
)
@click.option("--no-metrics", is_flag=True, help="Serve no metrics.")
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Brokers to start: more than 1 starts a cluster (as `kops cluster start`) on "
    "--bootstrap's port and the ones after it, topics replicated min(3, NODES) times.",
)
@logging_options("WARNING")
@kafka_options(json_output=False)
def up(
    *,
    files: tuple[Path, ...],
    data_dir: Path | None,
    broker_configs: tuple[tuple[str, str], ...],
    metrics: tuple[str, int],
    no_metrics: bool,
    nodes: int,
    log_level: str,
    settings: ClientSettings,
) -> None:
    """Run everything: the bundled broker and the worker with the recipe FILES.

    Starts a broker listening on --bootstrap unless one already answers there, then runs the
    jobs of FILES (default: recipes/*.toml, else a built-in delay-tiers recipe) and shows
    what is running. On a broker it starts, it first creates the topics the jobs read
    (e.g. `orders` for recipes/orders-retry-dlq.toml). Ctrl-C or SIGTERM stops the worker
    (commits, closes consumers), then the broker, and exits 130 (Ctrl-C) or 143 (SIGTERM).

    stderr gets warnings and errors only: what needs you. How each job is doing
    (partitions assigned, records handled, the delay tiers' status) is in the panel, kept
    up to date on a terminal; -v logs the start and stop of jobs, -vv also assignments
    and periodic status lines (and the broker's log at the same level).

    \b
    Examples:
      kops up                                    # broker on 127.0.0.1:9092 + recipes/
      kops up --bootstrap 127.0.0.1:19092 --data-dir /tmp/kops recipes/delay-tiers.toml
      kops up --nodes 3                          # a 3-broker cluster on 9092-9094 + recipes/
    """
    setup_logging(log_level)
    paths = recipe_files(files) if files else default_recipe_files()
    try:
        recipes = load_recipes(paths) if paths else [parse_recipe(tomllib.loads(DEFAULT_RECIPE))]
        # A recipe file may name the cluster (kops up starts the broker there) unless
        # --bootstrap/KOPS_BOOTSTRAP is given.
        settings = settings_for(recipes, settings, explicit_bootstrap())
        host, port = _first_address(settings.bootstrap)
        start_cluster = nodes > 1 and not broker_answers(host, port)
        if start_cluster:
            settings = dataclasses.replace(
                settings, bootstrap=",".join(f"{host}:{port + n}" for n in range(nodes))
            )
        # Build every job before starting anything: bad options fail fast, broker untouched.
        worker = Worker.from_recipes(recipes, settings, lag_exporter=not no_metrics)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None

    # The brokers kops up started (and stops): none, the bundled one, or a cluster.
    brokers: list[BrokerProcess] = []
    if start_cluster and host in _LOCAL_HOSTS:
        brokers = _start_cluster(nodes, data_dir, host, port, broker_configs, log_level)
        broker_line = f"started a cluster of {nodes}: {settings.bootstrap}"
        if data_dir is not None:
            broker_line += f", data in {data_dir}/node-N"
    elif broker_answers(host, port):
        broker_line = f"using the broker already at {settings.bootstrap}"
    elif host in _LOCAL_HOSTS:
        broker = BrokerProcess(
            data_dir,
            host=host,
            port=port,
            config=dict(broker_configs),
            extra_args=["--log-level", log_level],
            stderr=None,  # the broker's log goes to our stderr
            preexec_fn=_die_with_parent,
            metrics=None if no_metrics else "127.0.0.1:0",
        )
        try:
            address = broker.start()
        except BrokerStartError as exc:
            raise click.ClickException(str(exc)) from None
        brokers = [broker]
        broker_line = f"started: {address} (pid {broker.process.pid})"  # type: ignore[union-attr]
        if data_dir is not None:
            broker_line += f", data in {data_dir}"
        if broker.metrics_url:
            click.echo(f"broker metrics on {broker.metrics_url}")
            broker_line += f", metrics {broker.metrics_url}"
    else:
        raise click.ClickException(
            f"no broker answers at {settings.bootstrap}, and kops up starts one only on a "
            "local address (127.0.0.1, localhost)"
        )

    topics_line = ""
    if brokers:
        topics_line = _create_input_topics(settings, worker)

    out = console()
    worker_metrics_line = ""
    live: Live | None = None
    drawn_at = 0.0

    def panel(w: Worker, *, detail: bool) -> Panel:
        grid = Table.grid(padding=(0, 2))
        grid.add_row("broker", broker_line)
        grid.add_row("bootstrap", settings.bootstrap)
        grid.add_row("recipes", ", ".join(str(p) for p in paths) or "(built-in delay tiers)")
        if topics_line:
            grid.add_row("topics", topics_line)
        if worker_metrics_line:
            grid.add_row("metrics", worker_metrics_line)
        grid.add_row("jobs", jobs_table(w, detail=detail))
        return Panel(grid, title="kops up", subtitle="Ctrl-C to stop", expand=False)

    def started(w: Worker) -> None:
        nonlocal live
        running = f"kops up: running {len(w.jobs)} job(s) against {settings.bootstrap}"
        if not out.is_terminal:
            out.print(panel(w, detail=False))  # logs and pipes get it once
            click.echo(running)
            sys.stdout.flush()
            return
        click.echo(running)
        # Log lines to a terminal go above the live panel (rich redirects sys.stderr while
        # it draws), so they do not tear it; a redirected stderr keeps getting them as is.
        through = sys.stderr.isatty()
        live = Live(panel(w, detail=True), console=out, auto_refresh=False, redirect_stderr=through)
        live.start(refresh=True)
        if through:
            _log_to(sys.stderr)

    def redraw(w: Worker) -> None:
        nonlocal drawn_at
        if live is not None and time.monotonic() - drawn_at >= 1.0:
            drawn_at = time.monotonic()
            live.update(panel(w, detail=True), refresh=True)

    def broker_alive() -> str | None:
        for started_broker in brokers:
            if (code := started_broker.exited()) is not None:
                return f"the bundled broker exited (code {code})"
        return None

    started_at = time.monotonic()
    worker_metrics = None if no_metrics else metrics
    try:
        with serve_metrics(worker_metrics, lambda line: click.echo(f"worker {line}")) as url:
            worker_metrics_line = url or ""
            code = serve(worker, on_started=started, still_ok=broker_alive, on_tick=redraw)
    finally:
        if live is not None:
            live.update(panel(worker, detail=True), refresh=True)
            live.stop()
            _log_to(sys.stderr)
        if brokers:
            echo_err("stopping the broker..." if len(brokers) == 1 else "stopping the brokers...")
            for started_broker in brokers:
                started_broker.stop()
    echo_err(f"kops up: stopped after {time.monotonic() - started_at:.0f}s")
    if code is not None:
        sys.exit(code)  # 143 after SIGTERM, 130 after Ctrl-C: everything stopped cleanly


def _start_cluster(
    nodes: int,
    data_dir: Path | None,
    host: str,
    port: int,
    broker_configs: tuple[tuple[str, str], ...],
    log_level: str,
) -> list[BrokerProcess]:
    """Start `nodes` brokers as one cluster and wait until every one is active."""
    from kops.admin import describe_cluster_brokers
    from kops.cli.cluster import DEFAULT_CLUSTER_DIR, cluster_processes

    processes = cluster_processes(
        nodes,
        data_dir or DEFAULT_CLUSTER_DIR,
        host,
        port,
        [f"{k}={v}" for k, v in broker_configs],
        log_level,
        preexec_fn=_die_with_parent,
    )
    started: list[BrokerProcess] = []
    try:
        for node, process in processes.items():
            try:
                process.start()
            except BrokerStartError as exc:
                raise click.ClickException(f"broker {node}: {exc}") from None
            started.append(process)
        deadline = time.monotonic() + 60
        while True:
            # Topics are created next: every broker must be registered and active first.
            with contextlib.suppress(KopsClientError):
                _, registered = describe_cluster_brokers(f"{host}:{port}", timeout=2)
                if sum(not b.fenced for b in registered) == nodes:
                    return started
            if time.monotonic() > deadline:
                raise click.ClickException(f"the {nodes} brokers did not all become active")
            time.sleep(0.2)
    except BaseException:
        for process in started:
            process.stop()
        raise


def _log_to(stream: object) -> None:
    """Point the stderr log handlers at ``stream`` (rich's Live swaps sys.stderr while it
    draws, and logging keeps the stream it was given)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)  # type: ignore[arg-type]


def _create_input_topics(settings: ClientSettings, worker: Worker) -> str:
    """On the broker `kops up` started: create the topics the jobs read and nobody creates
    (the shipped orders recipe reads `orders`), with the broker's defaults, so no job starts
    by waiting for a topic. Returns the panel line ("" when nothing was missing)."""
    wanted = worker.input_topics()
    if not wanted:
        return ""
    try:
        with AdminSession(settings) as session:
            created = session.ensure_topics([NewTopic(t) for t in wanted])
    except KopsClientError as exc:  # the jobs wait for their topics and say so
        echo_err(f"kops up: could not create {', '.join(wanted)}: {exc}")
        return ""
    return ", ".join(f"created {t} (read by {', '.join(wanted[t])})" for t in created)
