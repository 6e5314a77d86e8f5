"""The ``call`` job kind: call ``target = "package.module:function"`` with ``args``.

Periodic when the job has ``every``/``cron``; otherwise the function is called once per
run with a ``stop`` event (``function(stop, **args)``) and must return when it is set.

Also :func:`load_callable`, which every job kind that names a function in its options
(``target``, ``handler``, ``drain_handler``) uses to import it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kops.recipes.loader import add_import_paths, import_object
from kops.worker.registry import JobContext, RecipeError, take_options

__all__ = ["call", "load_callable"]


def load_callable(
    spec: Any,
    what: str,
    *,
    python_path: str | list[str] | None = None,
    context: JobContext | None = None,
) -> Callable[..., Any]:
    """Import ``spec`` (``"package.module:function"``) for the option ``what``; RecipeError
    naming ``what`` when it cannot be imported or is not callable. ``python_path`` entries
    are relative to the recipe file (else the working directory) and go first on sys.path."""
    if python_path:
        base = context.recipe.parent if context is not None and context.recipe else Path.cwd()
        add_import_paths(python_path, base)
    try:
        obj = import_object(str(spec))
    except (ImportError, AttributeError, ValueError) as exc:
        raise RecipeError(f"{what}: cannot load {spec!r}: {exc}") from None
    if not callable(obj):
        raise RecipeError(f"{what}: {spec!r} is not callable")
    return obj


class _CallLoop:
    def __init__(self, fn: Callable[..., Any], args: dict[str, Any]):
        self.fn, self.args = fn, args

    def run(self, stop: threading.Event) -> None:
        self.fn(stop, **self.args)


def call(options: dict[str, Any], context: JobContext) -> Any:
    opts = take_options(options, {"target", "args"}, context.kind, required={"target"})
    if ":" not in str(opts["target"]):
        raise RecipeError("target must look like 'package.module:function'")
    fn = load_callable(opts["target"], "target")
    args = dict(opts.get("args", {}))
    if context.periodic:
        return lambda: fn(**args)
    return _CallLoop(fn, args)
