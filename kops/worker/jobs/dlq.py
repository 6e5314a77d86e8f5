"""Worker job kinds for retries and dead letters (registered in
:data:`kops.worker.registry.BUILTIN_KINDS`; the recipe format is in ``recipes/dlq.md``).

- ``retry-consumer`` (long-running): consume ``topics`` in ``group`` with ``handler``
  (``"package.module:function"``) wrapped in the retry/DLQ policy of its ``[job.retry]``
  table (:meth:`kops.recipes.retry.RetryPolicy.from_dict`). ``exactly_once = true``: each
  batch's retries, dead letters and offsets in one transaction.
- ``dlq-replay`` (periodic): replay a DLQ, rate-limited, each dead letter at most once; e.g.
  every night, the dead letters of the last day that failed more than an hour ago.
  ``exactly_once = true``: each batch's records and their markers in one transaction.

A cluster that refuses transactions stops an ``exactly_once`` job for good (``kops worker
run`` exits 1 saying so).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kops.recipes.delay import DEFAULT_MAX_DELAY, DEFAULT_TEMPLATE, DelayTiers
from kops.recipes.dlq.replay import ReplayFilter, replay
from kops.worker.jobs.call import load_callable
from kops.worker.registry import JobContext, RecipeError, take_options

__all__ = ["dlq_replay_job", "retry_consumer_job"]


def _seconds(value: Any, what: str) -> float:
    from kops.recipes.retry import duration_seconds

    try:
        return duration_seconds(value)
    except ValueError as exc:
        raise RecipeError(f"{what}: {exc}") from None


class RetryConsumerJob:
    """The ``retry-consumer`` job: :func:`kops.recipes.retry.run_retrying_consumer`."""

    def __init__(self, context: JobContext, kwargs: dict[str, Any]):
        self.context = context
        self.kwargs = kwargs
        self.stats: Any = None
        self.outcomes: Counter[str] = Counter()

    def run(self, stop: threading.Event) -> None:
        from kops.recipes.retry import run_retrying_consumer

        def count(_msg: Any, outcome: Any) -> None:
            self.outcomes[str(outcome)] += 1

        self.stats = run_retrying_consumer(
            self.context.settings, stop=stop, on_outcome=count, **self.kwargs
        )
        self.context.log.info("%s stopped: %s", self.context.name, self.stats.to_dict())

    def input_topics(self) -> list[str]:
        """The topics it consumes (their retry and dead-letter topics it creates itself)."""
        return list(self.kwargs["topics"])

    def consumer_groups(self) -> list[str]:
        """Its group, for the worker's lag exporter."""
        return [self.kwargs["group"]]

    def status_line(self) -> str:
        """``"handled 3, retry-scheduled 1, dead-lettered 1"`` so far in this run."""
        counts = dict(self.outcomes)
        if not counts:
            return f"waiting for records on {', '.join(self.kwargs['topics'])}"
        return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def retry_consumer_job(options: dict[str, Any], context: JobContext) -> RetryConsumerJob:
    from kops.recipes.retry import RetryPolicy

    kind = context.kind
    allowed = {"topics", "group", "handler", "python_path", "retry", "batch_size", "consumer"}
    allowed |= {"tiers", "template", "max_delay", "create_topics", "exactly_once", "instance_id"}
    opts = take_options(options, allowed, kind, required={"topics", "group", "handler"})
    if context.periodic:
        raise RecipeError(f"{kind} is long-running: remove every/cron")
    # python_path is relative to the recipe file, so a recipe can name handlers next to it.
    handler = load_callable(
        opts["handler"], f"{kind}: handler", python_path=opts.get("python_path"), context=context
    )
    try:
        policy = RetryPolicy.from_dict(opts.get("retry", {}))
        tiers = DelayTiers.parse(
            opts.get("tiers"),
            template=opts.get("template", DEFAULT_TEMPLATE),
            max_delay=opts.get("max_delay", DEFAULT_MAX_DELAY),
        )
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise RecipeError(f"{kind}: {exc}") from None
    topics = opts["topics"]
    kwargs = {
        "topics": [topics] if isinstance(topics, str) else list(topics),
        "handler": handler,
        "group": str(opts["group"]),
        "policy": policy,
        "tiers": tiers,
        "batch_size": int(opts.get("batch_size", 100)),
        "create_topics": bool(opts.get("create_topics", True)),
        "consumer_config": {str(k): v for k, v in dict(opts.get("consumer", {})).items()},
        "exactly_once": bool(opts.get("exactly_once", False)),
        "instance_id": str(opts["instance_id"]) if opts.get("instance_id") else None,
    }
    return RetryConsumerJob(context, kwargs)


def dlq_replay_job(options: dict[str, Any], context: JobContext) -> Callable[[], None]:
    """``since``/``until`` are durations before each run: ``since = "1d"``, ``until = "1h"``
    replays what failed between a day and an hour before the run."""
    kind = context.kind
    allowed = {"topic", "to", "exception", "since", "until", "key", "rate", "limit"}
    opts = take_options(
        options,
        allowed | {"include_in_doubt", "exactly_once"},
        kind,
        required={"topic"},
    )
    if not context.periodic:
        raise RecipeError(f"{kind} is periodic: give it every = ... or cron = ...")
    since = _seconds(opts["since"], "since") if "since" in opts else None
    until = _seconds(opts["until"], "until") if "until" in opts else None
    rate = float(opts.get("rate", 50.0))
    limit = opts.get("limit")

    def run() -> None:
        now = int(time.time() * 1000)
        where = ReplayFilter(
            exception=opts.get("exception"),
            since_ms=None if since is None else now - int(since * 1000),
            until_ms=None if until is None else now - int(until * 1000),
            key=opts.get("key"),
        )
        report = replay(
            context.settings, str(opts["topic"]), to=opts.get("to"), where=where,
            rate=rate or None, limit=None if limit is None else int(limit),
            include_in_doubt=bool(opts.get("include_in_doubt", False)), stop=context.stop,
            exactly_once=bool(opts.get("exactly_once", False)),
        )  # fmt: skip
        context.log.info("%s: %s: %s", context.name, report.dlq, report.summary())
        context.note(f"last run: {report.summary()}")

    return run
