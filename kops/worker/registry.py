"""The job registry: every kind of job a recipe file can name, in one place.

A *kind* maps to a factory ``factory(options, context)`` that builds the job from its
``[[job]]`` table (``options`` is the table minus the reserved keys) and returns either

- an object with ``run(stop: threading.Event) -> None``: a **long-running** job (a tier
  forwarder, a retry consumer). ``run`` must return soon after ``stop`` is set, having
  committed and closed its clients. If it raises, the worker logs it and builds the job
  again after a backoff.
- a plain callable taking no arguments: a **periodic** job, run on the job's ``every`` or
  ``cron`` schedule (never two runs of one job at once; missed runs are coalesced). Long
  runs should check ``context.stop`` and return early when it is set.

How a job is doing (partitions assigned, the last run's figures) goes to ``context.note``
(or a ``status_line()`` method of a long-running job), which ``kops up`` shows in its
panel; the log gets it at DEBUG. Keep WARNING and above for what a person must act on.

Add a kind by adding a line to :data:`BUILTIN_KINDS` (``"module:attribute"``, imported only
when a recipe uses the kind, so modules never import each other at start-up), or at run time
with :func:`register_job_kind`. Factories raise :class:`RecipeError` for bad options; use
:func:`take_options` to reject unknown keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kops.client import ClientSettings
from kops.errors import KopsError

__all__ = [
    "BUILTIN_KINDS",
    "JobContext",
    "JobFactory",
    "LongRunningJob",
    "RecipeError",
    "job_factory",
    "job_kinds",
    "register_job_kind",
    "take_options",
]


class RecipeError(KopsError, ValueError):
    """A recipe file or a job's options are wrong; the message names the file and job."""


@runtime_checkable
class LongRunningJob(Protocol):
    def run(self, stop: threading.Event) -> None: ...


@dataclass
class JobContext:
    """What a factory gets besides its options."""

    #: Where and how to connect (the recipe's ``bootstrap``/``[client]`` or the CLI's).
    settings: ClientSettings
    #: The job's name, unique within the worker.
    name: str
    kind: str
    #: True for ``every``/``cron`` jobs.
    periodic: bool = False
    #: The recipe file the job came from (relative paths in options are relative to it).
    recipe: Path | None = None
    #: Set when the worker shuts down; periodic jobs should return early when they see it.
    stop: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("kops.worker"))
    #: One line on how the job is doing, shown by ``kops up`` and ``kops worker run`` (the
    #: DETAIL column): set it with :meth:`note`. A long-running job may instead have a
    #: ``status_line()`` method returning it.
    detail: str | None = None
    #: The consumer groups of every job of the worker (a job says so with a
    #: ``consumer_groups()`` method) plus the recipes' ``[metrics] lag_groups``: what the
    #: ``consumer-lag`` job follows. Set by the worker; callable at run time only.
    worker_groups: Callable[[], list[str]] = field(default=lambda: [])

    def note(self, text: str) -> None:
        """Say how the job is doing, for people: ``kops up`` shows it in its panel. What
        fires per partition or per run goes here (and to the log at DEBUG), not to INFO."""
        self.detail = text


JobFactory = Callable[[dict[str, Any], JobContext], "LongRunningJob | Callable[[], Any]"]

#: kind -> "module:attribute" of its factory. One line per kind; other engineers add theirs.
BUILTIN_KINDS: dict[str, str] = {
    "delay-forwarders": "kops.worker.jobs.delay:delay_forwarders",
    "delay-status": "kops.worker.jobs.delay:delay_status_report",
    "call": "kops.worker.jobs.call:call",
    "retry-consumer": "kops.worker.jobs.dlq:retry_consumer_job",
    "dlq-replay": "kops.worker.jobs.dlq:dlq_replay_job",
    "backlog-fanout": "kops.worker.jobs.fanout:backlog_fanout_job",
    "consumer-lag": "kops.worker.jobs.lag:consumer_lag_job",
}

_registered: dict[str, JobFactory] = {}
_lock = threading.Lock()


def register_job_kind(kind: str, factory: JobFactory | str, *, replace: bool = False) -> None:
    """Make ``kind`` usable in recipe files. ``factory`` may be a ``"module:attr"`` string."""
    if not kind or not kind.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid job kind {kind!r}: use letters, digits, - and _")
    with _lock:
        if not replace and (kind in _registered or kind in BUILTIN_KINDS):
            raise ValueError(f"job kind {kind!r} is already registered")
        if isinstance(factory, str):
            BUILTIN_KINDS[kind] = factory
            _registered.pop(kind, None)
        else:
            _registered[kind] = factory


def job_kinds() -> list[str]:
    """Every known kind, sorted."""
    return sorted(set(BUILTIN_KINDS) | set(_registered))


def job_factory(kind: str) -> JobFactory:
    """The factory of ``kind``; RecipeError when unknown."""
    with _lock:
        factory = _registered.get(kind)
        path = BUILTIN_KINDS.get(kind)
    if factory is not None:
        return factory
    if path is None:
        raise RecipeError(f"unknown job kind {kind!r} (known: {', '.join(job_kinds())})")
    from kops.recipes.loader import import_object

    try:
        factory = import_object(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RecipeError(f"job kind {kind!r}: cannot load {path}: {exc}") from exc
    with _lock:
        _registered.setdefault(kind, factory)
    return factory


def take_options(
    options: Mapping[str, Any], allowed: Iterable[str], kind: str, required: Iterable[str] = ()
) -> dict[str, Any]:
    """``options`` as a dict, after checking for unknown and missing keys."""
    allowed = set(allowed)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise RecipeError(
            f"{kind}: unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    missing = sorted(set(required) - set(options))
    if missing:
        raise RecipeError(f"{kind}: missing option{'s' * (len(missing) > 1)} {', '.join(missing)}")
    return dict(options)
