"""Background log work that needs the event loop: compaction off the loop's thread.

Storage (kops.broker.log) has no event loop; this module runs its blocking
parts in a worker thread and its swaps on the loop.
"""

from __future__ import annotations

import asyncio
import logging

from kops.broker.log import CleanStats, LogManager

__all__ = ["compact_all_async"]

log = logging.getLogger("kops.broker.log")


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
