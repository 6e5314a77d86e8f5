"""asyncio helpers the broker's parts share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until each has finished.

    Whatever a task ends with (CancelledError, or an error it raised while
    being cancelled) is swallowed: shutdown must reach every task, and a
    background task's failure was already logged by the task itself.
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(BaseException):
            await task
