"""Run recipe jobs: long-running ones in their own threads, periodic ones with apscheduler.

::

    from kops.worker import Worker, load_recipes
    worker = Worker.from_recipes(load_recipes(["recipes/delay-tiers.toml"]), settings)
    worker.start()
    ...
    worker.stop()          # sets every job's stop event, joins threads, shuts the scheduler

A long-running job whose ``run`` raises is built again and restarted after a backoff
(1 s doubling to 60 s), so a broker restart does not need a worker restart.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from kops.client import ClientSettings
from kops.errors import Unsupported
from kops.worker.recipe import JobSpec, Recipe, Schedule
from kops.worker.registry import JobContext, LongRunningJob, RecipeError, job_factory

__all__ = ["JobState", "Worker", "settings_for"]

log = logging.getLogger("kops.worker")

_RESTART_MIN = 1.0
_RESTART_MAX = 60.0


@dataclass
class JobState:
    """What ``kops up``/``kops worker run`` show about a job."""

    spec: JobSpec
    status: str = "starting"  # starting | running | restarting | scheduled | stopped | failed
    restarts: int = 0
    runs: int = 0
    last_error: str | None = None
    last_run_at: float | None = None
    next_run_at: float | None = None
    instance: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "schedule": self.spec.schedule.describe(),
            "status": self.status,
            "restarts": self.restarts,
            "runs": self.runs,
            "last_error": self.last_error,
            "recipe": str(self.spec.recipe) if self.spec.recipe else None,
        }


def settings_for(
    recipes: Iterable[Recipe], cli: ClientSettings, cli_explicit: bool
) -> ClientSettings:
    """Connection settings: an explicit --bootstrap/KOPS_BOOTSTRAP wins over the files."""
    recipes = list(recipes)
    bootstraps = {r.bootstrap for r in recipes if r.bootstrap}
    bootstrap = cli.bootstrap
    if not cli_explicit and bootstraps:
        if len(bootstraps) > 1:
            raise RecipeError(
                f"recipe files name different bootstrap servers ({', '.join(sorted(bootstraps))}); "
                "pass --bootstrap"
            )
        bootstrap = bootstraps.pop()
    config: dict[str, str] = {}
    for r in recipes:
        config.update(r.client)
    config.update(cli.config)  # -X on the command line wins
    return ClientSettings(bootstrap=bootstrap, config=config, timeout=cli.timeout)


#: The job kind of the lag exporter, and the name of the one ``lag_exporter=True`` adds.
LAG_KIND = "consumer-lag"


class Worker:
    """Builds every job up front (bad options fail before anything starts), then runs them.

    ``lag_exporter``: also run a ``consumer-lag`` job every ``lag_interval`` seconds (unless
    the specs have one), which sets the consumer lag gauges of the jobs' groups and of
    ``lag_groups``: what ``kops worker run --metrics`` asks for."""

    def __init__(
        self,
        specs: Iterable[JobSpec],
        settings: ClientSettings,
        *,
        lag_exporter: bool = False,
        lag_groups: Iterable[str] = (),
        lag_interval: float | None = None,
    ):
        self.settings = settings
        self.stop_event = threading.Event()
        self.jobs: list[JobState] = []
        self.lag_groups = list(dict.fromkeys(lag_groups))
        self._threads: list[threading.Thread] = []
        self._scheduler: BackgroundScheduler | None = None
        # Periodic runs in progress; stop() waits for them itself (see there).
        self._periodic_running = 0
        self._periodic_done = threading.Condition()
        self._contexts: dict[str, JobContext] = {}
        # job name -> its consumer groups, kept from its last build (a job being restarted
        # has no instance for a moment; its groups have not changed).
        self._groups: dict[str, list[str]] = {}
        specs = list(specs)
        if lag_exporter and not any(s.kind == LAG_KIND for s in specs):
            from kops.worker.jobs.lag import DEFAULT_LAG_INTERVAL

            every = lag_interval or DEFAULT_LAG_INTERVAL
            specs.append(JobSpec(LAG_KIND, LAG_KIND, Schedule("every", every_seconds=every)))
        for spec in specs:
            state = JobState(spec)
            state.instance = self._build(spec)
            self.jobs.append(state)

    @classmethod
    def from_recipes(
        cls, recipes: Iterable[Recipe], settings: ClientSettings, *, lag_exporter: bool = False
    ) -> Worker:
        """The jobs of ``recipes``; their ``[metrics]`` tables give the lag exporter its
        extra groups and interval (the shortest one given)."""
        recipes = list(recipes)
        intervals = [r.lag_interval for r in recipes if r.lag_interval is not None]
        return cls(
            [job for r in recipes for job in r.jobs],
            settings,
            lag_exporter=lag_exporter,
            lag_groups=[g for r in recipes for g in r.lag_groups],
            lag_interval=min(intervals) if intervals else None,
        )

    def consumer_groups(self) -> list[str]:
        """The recipes' ``[metrics] lag_groups``, then the groups the jobs consume in."""
        groups = list(self.lag_groups)
        for state in self.jobs:
            groups += self._groups.get(state.spec.name, [])
        return list(dict.fromkeys(groups))

    def _context(self, spec: JobSpec) -> JobContext:
        # One context per job, kept across restarts: its note stays until the next one.
        if spec.name in self._contexts:
            return self._contexts[spec.name]
        context = self._contexts[spec.name] = JobContext(
            settings=self.settings,
            name=spec.name,
            kind=spec.kind,
            periodic=spec.schedule.periodic,
            recipe=spec.recipe,
            stop=self.stop_event,
            log=logging.getLogger(f"kops.worker.{spec.name}"),
            worker_groups=self.consumer_groups,
        )
        return context

    def _build(self, spec: JobSpec) -> LongRunningJob | Callable[[], Any]:
        where = f"{spec.recipe or 'recipe'}: job {spec.name!r}"
        factory = job_factory(spec.kind)
        try:
            job = factory(dict(spec.options), self._context(spec))
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"{where}: {exc}") from exc
        long_running = isinstance(job, LongRunningJob)
        if spec.schedule.periodic and long_running:
            raise RecipeError(f"{where}: kind {spec.kind!r} is long-running; remove every/cron")
        if not spec.schedule.periodic and not long_running:
            raise RecipeError(f"{where}: kind {spec.kind!r} is periodic; give every or cron")
        method = getattr(job, "consumer_groups", None)
        if callable(method):
            self._groups[spec.name] = [str(g) for g in method()]
        return job

    # -- running

    def start(self) -> None:
        periodic = [s for s in self.jobs if s.spec.schedule.periodic]
        if periodic:
            self._scheduler = BackgroundScheduler(
                executors={"default": ThreadPoolExecutor(max(2, min(8, len(periodic))))},
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
                timezone=UTC,
            )
            for state in periodic:
                self._scheduler.add_job(
                    self._run_periodic,
                    trigger=state.spec.schedule.trigger(),
                    args=(state,),
                    id=state.spec.name,
                    name=state.spec.name,
                )
                state.status = "scheduled"
            self._scheduler.start()
            self._refresh_next_runs()
        for state in self.jobs:
            if not state.spec.schedule.periodic:
                t = threading.Thread(
                    target=self._supervise, args=(state,), name=f"kops-job-{state.spec.name}"
                )
                t.start()
                self._threads.append(t)
        log.info("worker started %d job(s)", len(self.jobs))

    def _refresh_next_runs(self) -> None:
        if self._scheduler is None:
            return
        for state in self.jobs:
            job = self._scheduler.get_job(state.spec.name)
            if job is not None and job.next_run_time is not None:
                state.next_run_at = job.next_run_time.timestamp()

    def _run_periodic(self, state: JobState) -> None:
        with self._periodic_done:
            if self.stop_event.is_set():
                return
            self._periodic_running += 1
        state.status = "running"
        state.last_run_at = time.time()
        failed_for_good = False
        try:
            state.instance()
            state.last_error = None
        except Unsupported as exc:
            # Later runs would fail the same way (the cluster lacks what the job needs).
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.error("job %s stopped: %s", state.spec.name, exc)
            failed_for_good = True
            state.next_run_at = None
            if self._scheduler is not None:
                with contextlib.suppress(JobLookupError):
                    self._scheduler.remove_job(state.spec.name)
        except Exception as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", state.spec.name)
        finally:
            state.runs += 1
            if failed_for_good:
                state.status = "failed"
            else:
                state.status = "stopped" if self.stop_event.is_set() else "scheduled"
            if not self.stop_event.is_set():
                self._refresh_next_runs()
            with self._periodic_done:
                self._periodic_running -= 1
                self._periodic_done.notify_all()

    def _supervise(self, state: JobState) -> None:
        delay = _RESTART_MIN
        while not self.stop_event.is_set():
            job = state.instance
            if job is None:
                try:
                    job = state.instance = self._build(state.spec)
                except Exception as exc:
                    job = None
                    state.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("job %s: cannot start: %s", state.spec.name, exc)
            if job is not None:
                state.status = "running"
                started = time.monotonic()
                try:
                    job.run(self.stop_event)
                    if self.stop_event.is_set():
                        break
                    log.warning("job %s returned; restarting it", state.spec.name)
                except Unsupported as exc:
                    # Restarting cannot help (the cluster lacks what the job needs).
                    state.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("job %s stopped: %s", state.spec.name, exc)
                    state.status = "failed"
                    return
                except Exception as exc:
                    state.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("job %s failed; restarting in %.0fs", state.spec.name, delay)
                if time.monotonic() - started > 2 * _RESTART_MAX:
                    delay = _RESTART_MIN  # it ran fine for a while: start the backoff afresh
            state.instance = None
            state.restarts += 1
            state.status = "restarting"
            self.stop_event.wait(delay)
            delay = min(delay * 2, _RESTART_MAX)
        state.status = "stopped"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every job to stop and wait for them (commits, consumers closed)."""
        with self._periodic_done:
            self.stop_event.set()
        deadline = time.monotonic() + timeout
        if self._scheduler is not None:
            # Not shutdown(wait=True): apscheduler waits for running jobs while holding its
            # job-store lock, which a finishing run takes to read its next run time (a
            # deadlock seen under SIGTERM). Stop scheduling, then wait for the runs here.
            with contextlib.suppress(SchedulerNotRunningError):
                self._scheduler.shutdown(wait=False)
            with self._periodic_done:
                if not self._periodic_done.wait_for(
                    lambda: self._periodic_running == 0,
                    max(0.1, deadline - time.monotonic()),
                ):
                    log.warning("periodic jobs still running after %.0fs", timeout)
            for state in self.jobs:
                if state.spec.schedule.periodic:
                    state.status = "stopped"
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s did not stop within %.0fs", t.name, timeout)
        for state in self.jobs:
            # Periodic jobs that keep clients between runs (the lag exporter) close them.
            close = getattr(state.instance, "close", None)
            if state.spec.schedule.periodic and callable(close):
                with contextlib.suppress(Exception):
                    close()
        log.info("worker stopped")

    def wait(self, stop: threading.Event | None = None, poll: float = 0.5) -> None:
        """Block until ``stop`` (or the worker's own stop event) is set."""
        while not self.stop_event.is_set() and not (stop is not None and stop.is_set()):
            time.sleep(poll)
            self._refresh_next_runs()

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads) or self._scheduler is not None

    def input_topics(self) -> dict[str, list[str]]:
        """Topic -> the jobs that read it and do not create it (a job says so with an
        ``input_topics()`` method): what a new cluster needs before the jobs have work."""
        out: dict[str, list[str]] = {}
        for state in self.jobs:
            method = getattr(state.instance, "input_topics", None)
            for topic in method() if callable(method) else ():
                out.setdefault(topic, []).append(state.spec.name)
        return out

    def detail(self, state: JobState) -> str | None:
        """One line on how a job is doing: its ``status_line()`` when it has one (and it
        runs), else the last ``context.note``; then the last error, if any."""
        text = None
        status_line = getattr(state.instance, "status_line", None)
        if callable(status_line) and state.status == "running":
            with contextlib.suppress(Exception):
                text = status_line()
        if text is None:
            context = self._contexts.get(state.spec.name)
            text = context.detail if context is not None else None
        if state.last_error and state.status in ("restarting", "scheduled"):
            text = f"{text}; last error: {state.last_error}" if text else state.last_error
        return text

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for s in self.jobs:
            d = s.to_dict()
            d["detail"] = self.detail(s)
            d["next_run"] = (
                datetime.fromtimestamp(s.next_run_at, UTC).isoformat(timespec="seconds")
                if s.next_run_at and s.spec.schedule.periodic
                else None
            )
            out.append(d)
        return out
