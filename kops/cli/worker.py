"""``kops worker ...``: run recipe files. Logic is in :mod:`kops.worker`."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from kops.cli.common import console, graceful_stop, kafka_options, print_json
from kops.cli.metrics_server import metrics_option, serve_metrics
from kops.client import ClientSettings
from kops.worker import RecipeError, Worker, job_kinds, load_recipes, settings_for

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What each -v adds: the default level, then one step more per -v.
LOG_LEVELS = ("WARNING", "INFO", "DEBUG")

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``. The scheduler's own chatter (apscheduler: jobs added,
    scheduler started) shows only at DEBUG."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT, force=True)
    quiet = logging.getLevelName(level.upper()) != logging.DEBUG
    logging.getLogger("apscheduler").setLevel(logging.WARNING if quiet else logging.NOTSET)


def log_level_for(default: str, verbose: int, explicit: str | None) -> str:
    """``--log-level`` when given, else ``default`` raised one step (WARNING, INFO, DEBUG)
    per ``-v``."""
    if explicit:
        return explicit.upper()
    start = LOG_LEVELS.index(default) if default in LOG_LEVELS else 0
    return LOG_LEVELS[min(start + verbose, len(LOG_LEVELS) - 1)]


def logging_options(default: str) -> Callable[[F], F]:
    """``-v/--verbose`` (repeatable) and ``--log-level`` for a long-running command; the
    command receives ``log_level``, the level to give :func:`setup_logging`.

    stderr is for what a person must act on: per-partition assignments and periodic status
    lines are logged at DEBUG, the lifecycle (started, stopped) at INFO."""

    def decorator(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verbose = kwargs.pop("verbose")
            kwargs["log_level"] = log_level_for(default, verbose, kwargs.pop("log_level"))
            return f(*args, **kwargs)

        levels = LOG_LEVELS[LOG_LEVELS.index(default) :]
        more = ", ".join(f"{'-' + 'v' * i} {lvl}" for i, lvl in enumerate(levels[1:], start=1))
        out: Callable[..., Any] = click.option(
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            default=None,
            help=f"Logging level for stderr [default: {default}].",
        )(wrapper)
        out = click.option(
            "--verbose",
            "-v",
            count=True,
            help=f"Log more on stderr: {more} (assignments, periodic status)."
            if more
            else "Log more on stderr.",
        )(out)
        return out  # type: ignore[return-value]

    return decorator


def explicit_bootstrap() -> bool:
    """Whether --bootstrap or KOPS_BOOTSTRAP was given (then it wins over recipe files)."""
    ctx = click.get_current_context()
    source = ctx.get_parameter_source("bootstrap")
    return source not in (None, click.core.ParameterSource.DEFAULT)


def jobs_table(worker: Worker, *, detail: bool = False) -> Table:
    """The jobs, one row each; with ``detail``, how each is doing (the live panel of
    ``kops up``) instead of its recipe file."""
    table = Table(box=None, pad_edge=False)
    last = "DETAIL" if detail else "RECIPE"
    for col in ("JOB", "KIND", "SCHEDULE", "STATUS", last):
        table.add_column(col)
    for job in worker.describe():
        extra = job["recipe"]
        if detail:
            extra = job["detail"] or (f"next run {job['next_run']}" if job["next_run"] else None)
        table.add_row(job["name"], job["kind"], job["schedule"], job["status"], extra or "-")
    return table


def serve(
    worker: Worker,
    *,
    on_started: Callable[[Worker], None] | None = None,
    still_ok: Callable[[], str | None] | None = None,
    on_tick: Callable[[Worker], None] | None = None,
) -> int | None:
    """Start ``worker``, block until SIGTERM/SIGINT (or ``still_ok`` returns a reason to
    stop), then stop it cleanly: every job commits and closes its consumers, which leave
    their group at once. ``on_tick`` runs every half second meanwhile (to redraw a live
    view). Returns the exit status for the signal (130 SIGINT, 143 SIGTERM), None when none
    came; raises ClickException when ``still_ok`` gave a reason."""
    problem: str | None = None
    with graceful_stop(exit_on_signal=False) as stop:
        try:
            worker.start()
            if on_started is not None:
                on_started(worker)
            while not stop.wait(0.5):
                if problem := _failed_for_good(worker):
                    break
                if still_ok is not None and (problem := still_ok()):
                    break
                if on_tick is not None:
                    on_tick(worker)
        finally:
            worker.stop()
    if problem:
        raise click.ClickException(problem)
    return stop.exit_code


def _failed_for_good(worker: Worker) -> str | None:
    """A job that stopped because the cluster lacks what it needs (it is not restarted):
    the command says so and exits 1 rather than run on without it."""
    for state in worker.jobs:
        if state.status == "failed":
            return f"job {state.spec.name} stopped: {state.last_error}"
    return None


def recipe_files(files: Iterable[Path]) -> list[Path]:
    """Files as given, with directories expanded to their ``*.toml``."""
    out: list[Path] = []
    for f in files:
        out.extend(sorted(f.glob("*.toml")) if f.is_dir() else [f])
    return out


@click.group()
def worker() -> None:
    """Run recipe files: long-running jobs and periodic (every/cron) jobs."""


def metrics_announcer(as_json: bool) -> Callable[[str], None]:
    """Where "metrics on URL" goes: stdout for people; stderr with --json (stdout is JSON)."""
    return functools.partial(click.echo, err=as_json)


@worker.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@metrics_option
@logging_options("INFO")
@kafka_options()
def run(
    *,
    files: tuple[Path, ...],
    metrics: tuple[str, int] | None,
    log_level: str,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Run the jobs of recipe FILES (TOML; a directory means its *.toml) until SIGTERM/Ctrl-C.

    Prints the jobs on stdout, logs on stderr (INFO: start and stop; -v adds partition
    assignments and periodic status lines). On SIGTERM or Ctrl-C every job stops cleanly
    (commits, closes its consumers), then it exits 143 (SIGTERM) or 130 (Ctrl-C).
    --bootstrap/KOPS_BOOTSTRAP win over a file's bootstrap.
    The format is described in recipes/README.md; `kops worker kinds` lists job kinds.

    With --metrics HOST:PORT it serves Prometheus metrics (every recipe's, and consumer
    lag of the jobs' groups and of the files' [metrics] lag_groups, measured every
    lag_interval, default 15s) at http://HOST:PORT/metrics and prints that URL.

    \b
    Example:
      kops worker run recipes/delay-tiers.toml
      kops worker run recipes/ --metrics 127.0.0.1:9400
    """
    setup_logging(log_level)
    try:
        recipes = load_recipes(recipe_files(files))
        settings = settings_for(recipes, settings, explicit_bootstrap())
        w = Worker.from_recipes(recipes, settings, lag_exporter=metrics is not None)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None
    if not w.jobs:
        raise click.ClickException("the recipe files define no enabled jobs")

    with serve_metrics(metrics, metrics_announcer(as_json)) as url:

        def started(w: Worker) -> None:
            if as_json:
                out: dict[str, Any] = {"bootstrap": settings.bootstrap, "jobs": w.describe()}
                if url:
                    out["metrics"] = url
                print_json(out, compact=True)
            else:
                rich = console()
                rich.print(f"kops worker: {len(w.jobs)} job(s) against {settings.bootstrap}")
                rich.print(jobs_table(w))
            sys.stdout.flush()

        code = serve(w, on_started=started)
    if code is not None:
        sys.exit(code)


@worker.command("kinds")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def kinds(as_json: bool) -> None:
    """List the job kinds recipe files can use."""
    names = job_kinds()
    if as_json:
        print_json(names)
    else:
        for name in names:
            click.echo(name)
