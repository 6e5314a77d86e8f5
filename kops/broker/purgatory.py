"""Parked requests: Kafka's DelayedOperation and purgatory, on the event loop.

A request that cannot be answered yet (a Fetch short of min.bytes, a JoinGroup
waiting for members to rejoin, and for a replicated partition a Produce with
acks=all waiting for the high watermark) becomes a `DelayedOperation`. The
purgatory watches it under the keys whose events can satisfy it (a
topic-partition, a group id) and:

- `try_complete_else_watch` checks it once, and parks it if not satisfied;
- `check_and_complete(key)` re-checks everything parked on `key`; whoever
  causes the event (an append, a high-watermark move, a member joining) calls it;
- after `delay` seconds the operation expires: `on_expiration`, then
  `on_complete`, which runs exactly once whichever way the operation ends.

Everything runs on one event loop, so there is no locking: an operation's
check, its completion and its timer never interleave.

A purgatory made with `batch_events=True` re-checks on the next loop turn
instead, once per operation however many of its keys fired in between: a
produce request appending to ten partitions then wakes a fetch parked on all
of them once, after the last append, so the fetch answers with all ten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["DelayedOperation", "Purgatory"]

K = TypeVar("K", bound=Hashable)


class DelayedOperation:
    """One parked request. Subclasses implement `try_complete` and `on_complete`."""

    def __init__(self, delay: float) -> None:
        self.delay = max(delay, 0.0)
        self._completed = False
        self._timer: asyncio.TimerHandle | None = None
        self._unwatch: list[set[DelayedOperation]] = []
        self._done: asyncio.Future[None] | None = None

    # ---- for subclasses ------------------------------------------------------
    def try_complete(self) -> bool:
        """Check the condition; when it holds call `force_complete()` and return its result."""
        raise NotImplementedError

    def on_complete(self) -> None:
        """Produce the response; called once, whether satisfied, expired or forced."""
        raise NotImplementedError

    def on_expiration(self) -> None:
        """Called before `on_complete` when the delay passed without the condition holding."""

    # ---- completion ----------------------------------------------------------
    @property
    def is_completed(self) -> bool:
        return self._completed

    def force_complete(self) -> bool:
        """Complete now; False if it already completed (or was cancelled)."""
        if not self._finish():
            return False
        self.on_complete()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        return True

    def cancel(self) -> None:
        """Drop the operation without completing it (its requester went away)."""
        self._finish()
        if self._done is not None and not self._done.done():
            self._done.cancel()

    async def wait(self) -> None:
        """Until the operation completes; cancelling the waiter cancels the operation."""
        if self._completed:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        try:
            await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _finish(self) -> bool:
        if self._completed:
            return False
        self._completed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for watchers in self._unwatch:
            watchers.discard(self)
        self._unwatch.clear()
        return True

    def _expire(self) -> None:
        self._timer = None
        if self._completed:
            return
        self.on_expiration()
        self.force_complete()


class Purgatory(Generic[K]):
    """Delayed operations by the keys that can complete them."""

    def __init__(self, name: str, *, batch_events: bool = False) -> None:
        self.name = name
        self._watchers: dict[K, set[DelayedOperation]] = {}
        self._batch_events = batch_events
        self._to_recheck: set[DelayedOperation] = set()
        self._recheck_handle: asyncio.Handle | None = None

    def try_complete_else_watch(self, operation: DelayedOperation, keys: Iterable[K]) -> bool:
        """True if the operation completed at once; otherwise it is parked under `keys`
        until one of them satisfies it or its delay passes."""
        if operation.try_complete():
            return True
        for key in keys:
            watchers = self._watchers.setdefault(key, set())
            watchers.add(operation)
            operation._unwatch.append(watchers)
        operation._timer = asyncio.get_running_loop().call_later(operation.delay, operation._expire)
        return False

    def check_and_complete(self, key: K) -> int:
        """Re-check the operations parked on `key`; returns how many completed
        (always 0 with batch_events: they are re-checked on the next loop turn)."""
        watchers = self._watchers.get(key)
        if not watchers:
            if watchers is not None:
                del self._watchers[key]
            return 0
        if self._batch_events:
            self._to_recheck.update(watchers)
            if self._recheck_handle is None:
                self._recheck_handle = asyncio.get_running_loop().call_soon(self._recheck)
            return 0
        completed = 0
        for operation in list(watchers):
            if not operation.is_completed and operation.try_complete():
                completed += 1
        if not watchers:
            self._watchers.pop(key, None)
        return completed

    def _recheck(self) -> None:
        self._recheck_handle = None
        operations, self._to_recheck = self._to_recheck, set()
        for operation in operations:
            if not operation.is_completed:
                operation.try_complete()

    def watched(self, key: K) -> int:
        """How many operations are parked on `key`."""
        return len(self._watchers.get(key, ()))

    def __len__(self) -> int:
        return len({op for ops in self._watchers.values() for op in ops})

    def cancel_all(self) -> None:
        """Drop every parked operation (shutdown)."""
        for operation in {op for ops in self._watchers.values() for op in ops}:
            operation.cancel()
        self._watchers.clear()
        self._to_recheck.clear()
        if self._recheck_handle is not None:
            self._recheck_handle.cancel()
            self._recheck_handle = None
