"""The ``call`` job kind: call ``target = "package.module:function"`` with ``args``.

Periodic when the job has ``every``/``cron``; otherwise the function is called once per
run with a ``stop`` event (``function(stop, **args)``) and must return when it is set.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from kops.worker.registry import JobContext, RecipeError, take_options

__all__ = ["call"]


class _CallLoop:
    def __init__(self, fn: Callable[..., Any], args: dict[str, Any]):
        self.fn, self.args = fn, args

    def run(self, stop: threading.Event) -> None:
        self.fn(stop, **self.args)


def call(options: dict[str, Any], context: JobContext) -> Any:
    opts = take_options(options, {"target", "args"}, context.kind, required={"target"})
    module_name, _, attr = str(opts["target"]).partition(":")
    if not attr:
        raise RecipeError("target must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"cannot load {opts['target']}: {exc}") from None
    args = dict(opts.get("args", {}))
    if context.periodic:
        return lambda: fn(**args)
    return _CallLoop(fn, args)
