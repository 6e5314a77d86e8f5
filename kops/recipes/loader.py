"""``"package.module:attr"`` -> the object: the one loader behind handlers, exception types,
job targets and job kinds (recipe files, the retry policy, the worker's registry)."""

from __future__ import annotations

import builtins
import importlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["add_import_paths", "import_object"]


def import_object(path: str) -> Any:
    """``"package.module:name"`` (``name`` may be dotted: ``"mod:Class.method"``), or
    ``"package.module.name"``, or a builtin like ``"ValueError"`` -> the object.

    Raises ImportError (no such module), AttributeError (no such name) or ValueError (not a
    path at all).
    """
    text = path.strip()
    module_name, sep, attr = text.partition(":")
    if not sep:
        module_name, _, attr = text.rpartition(".")
        if not module_name:
            if attr and hasattr(builtins, attr):
                return getattr(builtins, attr)
            raise ValueError(f"cannot import {path!r}: use 'package.module:name'")
    if not module_name or not attr:
        raise ValueError(f"cannot import {path!r}: use 'package.module:name'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def add_import_paths(paths: str | Iterable[str], base: str | Path | None = None) -> None:
    """Put ``paths`` (relative to ``base``, default the working directory) first on
    ``sys.path``, once each."""
    root = Path(base) if base is not None else Path.cwd()
    for entry in [paths] if isinstance(paths, str) else paths:
        path = str((root / entry).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
