"""Background log work on the event loop: retention, recovery checkpoints, compaction.

Storage (kops.broker.log) has no event loop; this module runs its passes on
timers, compaction's blocking part in a worker thread and its swap on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kops.broker.config import BrokerConfig
from kops.broker.log import CleanStats, LogManager

__all__ = ["compact_all_async", "housekeeping_tasks"]

log = logging.getLogger("kops.broker.log")


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _every(interval_ms: int, what: str, work: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            result = work()
            if isinstance(result, Awaitable):
                await result
        except Exception:
            log.exception("%s failed", what)


def housekeeping_tasks(logs: LogManager, config: BrokerConfig) -> list[asyncio.Task[None]]:
    """The broker's log timers, as tasks for it to cancel when it stops."""

    def retention() -> None:
        # Rolling by segment.ms here too: an idle partition's active
        # segment must close before retention can delete it.
        logs.maybe_roll_all(_now_ms())
        logs.apply_retention(_now_ms())

    return [
        asyncio.create_task(
            _every(config.int("log.retention.check.interval.ms"), "retention pass", retention)
        ),
        # Kafka's log.flush.offset.checkpoint.interval.ms task: the further the recovery
        # point trails the log, the more an unclean restart must re-validate.
        asyncio.create_task(
            _every(
                logs.checkpoint_interval_ms,
                "recovery-point checkpoint",
                lambda: logs.checkpoint_recovery_points(_now_ms()),
            )
        ),
        # The heavy part runs in a worker thread; planning and the
        # segment swap stay on the loop, so appends never race it.
        asyncio.create_task(
            _every(
                config.int("log.cleaner.backoff.ms"),
                "log cleaner pass",
                lambda: compact_all_async(logs, _now_ms()),
            )
        ),
    ]


async def compact_all_async(logs: LogManager, now_ms: int) -> CleanStats:
    """LogManager.compact_all for the event loop: reading, decoding and writing
    run in a worker thread.

    Planning and the final swap run on the loop, between requests, so the broker
    never sees a half-swapped log. Cancelling this coroutine cancels the pass.
    """
    total = CleanStats()
    for key, plog in logs.logs().items():
        job = plog.begin_compaction(now_ms)
        if job is None:
            continue
        try:
            await asyncio.to_thread(job.run)
        except BaseException:
            job.cancel()
            plog.finish_compaction(job)
            raise
        try:
            total.add(plog.finish_compaction(job))
        except Exception:
            log.exception("compaction of %s-%d failed", *key)
        if job.error is not None and not job.cancelled:
            log.warning("compaction of %s-%d failed: %r", key[0], key[1], job.error)
    return total
