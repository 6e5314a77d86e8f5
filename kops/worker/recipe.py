"""Recipe files: TOML that says which jobs a worker runs (format in ``recipes/README.md``).

::

    bootstrap = "127.0.0.1:9092"        # optional; --bootstrap / KOPS_BOOTSTRAP win
    [client]                            # optional extra librdkafka properties
    "security.protocol" = "PLAINTEXT"

    [[job]]
    kind = "delay-forwarders"           # long-running: no every/cron
    tiers = ["1s", "5s", "1m"]

    [[job]]
    name = "delay-report"
    kind = "delay-status"
    every = "1m"                        # or cron = "0 3 * * *" (UTC unless timezone = ...)
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from apscheduler.triggers.cron import CronTrigger

from kops.timeparse import parse_duration
from kops.worker.registry import RecipeError

__all__ = ["JobSpec", "Recipe", "Schedule", "load_recipe", "load_recipes", "parse_recipe"]

#: Keys of a [[job]] table that are not the job's own options.
RESERVED = frozenset({"name", "kind", "every", "cron", "schedule", "timezone", "enabled"})
_TOP_LEVEL = frozenset({"bootstrap", "client", "job", "description", "metrics"})
#: Keys of the [metrics] table: what the lag exporter (``consumer-lag``) follows, how often.
_METRICS_KEYS = frozenset({"lag_groups", "lag_interval"})
_CRON_NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}


@dataclass(frozen=True)
class Schedule:
    """When a job runs: all the time, every N seconds, or on a crontab."""

    kind: Literal["long-running", "every", "cron"] = "long-running"
    every_seconds: float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @property
    def periodic(self) -> bool:
        return self.kind != "long-running"

    def describe(self) -> str:
        if self.kind == "every":
            return f"every {self.every_seconds:g}s"
        if self.kind == "cron":
            return f"cron {self.cron} ({self.timezone})"
        return "long-running"

    def trigger(self) -> Any:
        """The apscheduler trigger of a periodic schedule."""
        from apscheduler.triggers.interval import IntervalTrigger

        if self.kind == "every":
            return IntervalTrigger(seconds=self.every_seconds, timezone=self.timezone)
        if self.kind == "cron":
            return CronTrigger.from_crontab(self.cron, timezone=self.timezone)
        raise ValueError("a long-running job has no trigger")


@dataclass
class JobSpec:
    name: str
    kind: str
    schedule: Schedule
    options: dict[str, Any] = field(default_factory=dict)
    recipe: Path | None = None


@dataclass
class Recipe:
    path: Path | None
    bootstrap: str | None = None
    client: dict[str, str] = field(default_factory=dict)
    jobs: list[JobSpec] = field(default_factory=list)
    description: str | None = None
    #: ``[metrics] lag_groups``: groups the lag exporter follows besides the jobs' own.
    lag_groups: list[str] = field(default_factory=list)
    #: ``[metrics] lag_interval`` in seconds (None: the default, 15 s).
    lag_interval: float | None = None


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "recipe"


def _schedule(table: Mapping[str, Any], where: str) -> Schedule:
    tz = str(table.get("timezone", "UTC"))
    given = [k for k in ("every", "cron", "schedule") if k in table]
    if len(given) > 1:
        raise RecipeError(f"{where}: give only one of every, cron and schedule")
    every, cron = table.get("every"), table.get("cron")
    if "schedule" in table:
        text = str(table["schedule"]).strip()
        if text in ("long-running", "always"):
            return Schedule()
        if text.startswith("@") or len(text.split()) == 5:
            cron = text
        else:
            every = text
    if every is not None:
        try:
            seconds = float(every) if isinstance(every, int | float) else parse_duration(str(every))
        except ValueError as exc:
            raise RecipeError(f"{where}: every: {exc}") from None
        if seconds <= 0:
            raise RecipeError(f"{where}: every must be longer than 0")
        return Schedule("every", every_seconds=seconds, timezone=tz)
    if cron is not None:
        expr = _CRON_NICKNAMES.get(str(cron).strip(), str(cron).strip())
        try:
            CronTrigger.from_crontab(expr, timezone=tz)
        except (ValueError, LookupError) as exc:
            raise RecipeError(f"{where}: cron {cron!r}: {exc}") from None
        return Schedule("cron", cron=expr, timezone=tz)
    return Schedule(timezone=tz)


def _metrics(table: Any, where: str) -> tuple[list[str], float | None]:
    """``[metrics]``: ``lag_groups = ["billing"]``, ``lag_interval = "15s"``."""
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: [metrics] must be a table (lag_groups, lag_interval)")
    unknown = sorted(set(table) - _METRICS_KEYS)
    if unknown:
        raise RecipeError(
            f"{where}: [metrics]: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
            "(allowed: lag_groups, lag_interval)"
        )
    groups = table.get("lag_groups", [])
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise RecipeError(f"{where}: [metrics] lag_groups must be a list of group names")
    interval = table.get("lag_interval")
    if interval is None:
        return groups, None
    try:
        seconds = (
            float(interval) if isinstance(interval, int | float) else parse_duration(str(interval))
        )
    except ValueError as exc:
        raise RecipeError(f"{where}: [metrics] lag_interval: {exc}") from None
    if seconds <= 0:
        raise RecipeError(f"{where}: [metrics] lag_interval must be longer than 0")
    return groups, seconds


def parse_recipe(data: Mapping[str, Any], path: Path | None = None) -> Recipe:
    """A :class:`Recipe` from parsed TOML; RecipeError names the file and job on problems."""
    where = _where(path)
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise RecipeError(
            f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
            "(allowed: bootstrap, client, description, [metrics], [[job]])"
        )
    client = data.get("client", {})
    if not isinstance(client, dict):
        raise RecipeError(f"{where}: [client] must be a table of librdkafka properties")
    jobs_raw = data.get("job", [])
    if not isinstance(jobs_raw, list):
        raise RecipeError(f"{where}: jobs are [[job]] tables")
    recipe = Recipe(
        path=path,
        bootstrap=str(data["bootstrap"]) if data.get("bootstrap") else None,
        client={str(k): str(v) for k, v in client.items()},
        description=data.get("description"),
    )
    recipe.lag_groups, recipe.lag_interval = _metrics(data.get("metrics", {}), where)
    seen: dict[str, int] = {}
    for i, table in enumerate(jobs_raw, start=1):
        job_where = f"{where}: job {i}"
        if not isinstance(table, dict) or not table.get("kind"):
            raise RecipeError(f"{job_where}: every [[job]] needs a kind")
        if table.get("enabled", True) is False:
            continue
        kind = str(table["kind"])
        name = str(table.get("name") or kind)
        if "name" not in table and name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        if name in seen and "name" in table:
            raise RecipeError(f"{job_where}: duplicate job name {name!r}")
        seen.setdefault(name, 1)
        options = {k: v for k, v in table.items() if k not in RESERVED}
        recipe.jobs.append(
            JobSpec(name, kind, _schedule(table, f"{where}: job {name!r}"), options, path)
        )
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except OSError as exc:
        raise RecipeError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    return parse_recipe(data, path)


def load_recipes(paths: Iterable[str | Path]) -> list[Recipe]:
    """Load several files; job names must be unique across them."""
    recipes = [load_recipe(p) for p in paths]
    owner: dict[str, Path | None] = {}
    for recipe in recipes:
        for job in recipe.jobs:
            if job.name in owner:
                raise RecipeError(
                    f"job {job.name!r} is in both {_where(owner[job.name])} and "
                    f"{_where(recipe.path)}: give one of them another name"
                )
            owner[job.name] = recipe.path
    return recipes
