"""The kops worker: runs recipe files (TOML) of long-running and periodic jobs.

See ``recipes/README.md`` for the file format and :mod:`kops.worker.registry` for adding a
job kind.
"""

from kops.worker.recipe import JobSpec, Recipe, Schedule, load_recipe, load_recipes, parse_recipe
from kops.worker.registry import (
    JobContext,
    RecipeError,
    job_kinds,
    register_job_kind,
    take_options,
)
from kops.worker.runner import JobState, Worker, settings_for

__all__ = [
    "JobContext",
    "JobSpec",
    "JobState",
    "Recipe",
    "RecipeError",
    "Schedule",
    "Worker",
    "job_kinds",
    "load_recipe",
    "load_recipes",
    "parse_recipe",
    "register_job_kind",
    "settings_for",
    "take_options",
]
