"""``kops worker ...``: run recipe files. Logic is in :mod:`kops.worker`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import click
from rich.table import Table

from kops.cli.common import console, graceful_stop, kafka_options, print_json
from kops.client import ClientSettings
from kops.worker import RecipeError, Worker, job_kinds, load_recipes, settings_for

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT, force=True)


def explicit_bootstrap() -> bool:
    """Whether --bootstrap or KOPS_BOOTSTRAP was given (then it wins over recipe files)."""
    ctx = click.get_current_context()
    source = ctx.get_parameter_source("bootstrap")
    return source not in (None, click.core.ParameterSource.DEFAULT)


def jobs_table(worker: Worker) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("JOB", "KIND", "SCHEDULE", "STATUS", "RECIPE"):
        table.add_column(col)
    for job in worker.describe():
        table.add_row(
            job["name"], job["kind"], job["schedule"], job["status"], job["recipe"] or "-"
        )
    return table


def serve(
    worker: Worker,
    *,
    on_started: Callable[[Worker], None] | None = None,
    still_ok: Callable[[], str | None] | None = None,
) -> int | None:
    """Start ``worker``, block until SIGTERM/SIGINT (or ``still_ok`` returns a reason to
    stop), then stop it cleanly: every job commits and closes its consumers, which leave
    their group at once. Returns the exit status for the signal (130 SIGINT, 143 SIGTERM),
    None when none came; raises ClickException when ``still_ok`` gave a reason."""
    problem: str | None = None
    with graceful_stop(exit_on_signal=False) as stop:
        try:
            worker.start()
            if on_started is not None:
                on_started(worker)
            while not stop.wait(0.5):
                if still_ok is not None and (problem := still_ok()):
                    break
        finally:
            worker.stop()
    if problem:
        raise click.ClickException(problem)
    return stop.exit_code


def recipe_files(files: Iterable[Path]) -> list[Path]:
    """Files as given, with directories expanded to their ``*.toml``."""
    out: list[Path] = []
    for f in files:
        out.extend(sorted(f.glob("*.toml")) if f.is_dir() else [f])
    return out


@click.group()
def worker() -> None:
    """Run recipe files: long-running jobs and periodic (every/cron) jobs."""


@worker.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--log-level", default="INFO", show_default=True, help="Logging level for stderr.")
@kafka_options()
def run(
    *, files: tuple[Path, ...], log_level: str, settings: ClientSettings, as_json: bool
) -> None:
    """Run the jobs of recipe FILES (TOML; a directory means its *.toml) until SIGTERM/Ctrl-C.

    Prints the jobs on stdout, logs on stderr. On SIGTERM or Ctrl-C every job stops cleanly
    (commits, closes its consumers), then it exits 143 (SIGTERM) or 130 (Ctrl-C).
    --bootstrap/KOPS_BOOTSTRAP win over a file's bootstrap.
    The format is described in recipes/README.md; `kops worker kinds` lists job kinds.

    \b
    Example:
      kops worker run recipes/delay-tiers.toml
    """
    setup_logging(log_level)
    try:
        recipes = load_recipes(recipe_files(files))
        settings = settings_for(recipes, settings, explicit_bootstrap())
        w = Worker.from_recipes(recipes, settings)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None
    if not w.jobs:
        raise click.ClickException("the recipe files define no enabled jobs")

    def started(w: Worker) -> None:
        if as_json:
            print_json({"bootstrap": settings.bootstrap, "jobs": w.describe()}, compact=True)
        else:
            out = console()
            out.print(f"kops worker: {len(w.jobs)} job(s) against {settings.bootstrap}")
            out.print(jobs_table(w))
        sys.stdout.flush()

    if (code := serve(w, on_started=started)) is not None:
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
