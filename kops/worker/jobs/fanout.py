"""The ``backlog-fanout`` worker job: the fan-out plus N drain consumers, in one job.

Options of its ``[[job]]`` table (``recipes/backlog-fanout.toml`` documents them for users):

- ``from``, ``group``, ``to`` (required): source topic, source group, target topic;
- ``start``: where partitions the group never committed begin, ``"earliest"``, ``"latest"``
  or a time (ISO-8601, epoch ms, ``"2h"`` ago); required when the group has no committed
  offsets on the source (the job refuses rather than forward the whole topic);
- ``partitions`` (64), ``rate`` (records/s, unlimited), ``create`` (true),
  ``replication_factor``, ``until_caught_up`` (false: keep following the source);
- ``drain_consumers`` (0): consumers of the target started by the job, each a
  :class:`kops.recipes.parallel.ParallelConsumer` with ``drain_workers`` threads (1);
- ``drain_group`` (``<to>.drain``), ``drain_handler`` (``"module:function"``, required with
  drain consumers), ``python_path`` (where to import it from, relative to the recipe);
- ``dedup``: a SQLite path (relative to the recipe) or ``redis://`` URL; the drain handler is
  then wrapped in :class:`kops.recipes.idempotent.Idempotent`, so records the fan-out forwarded
  twice (after a crash) are applied once;
- ``exactly_once`` (false): forward each round and commit its source offsets in one
  transaction (:mod:`kops.recipes.fanout.transactional`); the drain consumers then read
  with read_committed, so each source record reaches the handler once without ``dedup``.
  A cluster that refuses transactions stops the job for good (the worker exits 1).

Wired as ``"backlog-fanout": "kops.worker.jobs.fanout:backlog_fanout_job"`` in
:data:`kops.worker.registry.BUILTIN_KINDS`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from kops.client import KopsClientError, close_consumer
from kops.recipes.exactly_once import read_committed
from kops.recipes.fanout.forward import BacklogFanout
from kops.worker.jobs.call import load_callable
from kops.worker.registry import JobContext, RecipeError, take_options

__all__ = ["BacklogFanoutJob", "backlog_fanout_job"]

_ALLOWED = {
    "from",
    "group",
    "to",
    "partitions",
    "rate",
    "start",
    "create",
    "replication_factor",
    "until_caught_up",
    "drain_consumers",
    "drain_workers",
    "drain_group",
    "drain_handler",
    "python_path",
    "dedup",
    "exactly_once",
}


class BacklogFanoutJob:
    """Long-running: forwards (until caught up, or forever) and drains until stopped."""

    def __init__(
        self,
        context: JobContext,
        fanout: BacklogFanout,
        *,
        until_caught_up: bool,
        drain_consumers: int,
        drain_workers: int,
        drain_group: str,
        handler: Callable[[Any], Any] | None,
    ) -> None:
        self.context = context
        self.fanout = fanout
        self.until_caught_up = until_caught_up
        self.drain_consumers = drain_consumers
        self.drain_workers = drain_workers
        self.drain_group = drain_group
        self.handler = handler
        self.report: Any = None
        self.errors: list[BaseException] = []

    def input_topics(self) -> list[str]:
        """The backlog's topic (the target it creates itself)."""
        return [self.fanout.source]

    def consumer_groups(self) -> list[str]:
        """The source group, and the drain group when it runs drain consumers."""
        return [self.fanout.group] + ([self.drain_group] if self.drain_consumers else [])

    def run(self, stop: threading.Event) -> None:
        from kops.recipes.parallel import ParallelConsumer

        log = self.context.log
        try:
            self.fanout.ensure_target()  # the drain consumers subscribe to it right away
        except KopsClientError as exc:
            if exc.code != "NO_COMMITTED_OFFSETS":
                raise
            raise RecipeError(
                f"{self.context.name}: {exc} with start = 'earliest', 'latest' or a time"
            ) from None
        failed = threading.Event()
        drains = []
        for _ in range(self.drain_consumers):
            config = self.context.settings.consumer_config(self.drain_group)
            # Aborted rounds of an exactly-once fan-out are in the target too: skip them.
            consumer = Consumer(read_committed(config) if self.fanout.exactly_once else config)
            assert self.handler is not None
            pc = ParallelConsumer(consumer, self.handler, workers=self.drain_workers)
            pc.subscribe([self.fanout.target])
            drains.append(pc)

        def guarded(name: str, body: Callable[[], Any]) -> threading.Thread:
            def target() -> None:
                try:
                    body()
                except BaseException as exc:
                    log.error("%s: %s failed: %s", self.context.name, name, exc)
                    self.errors.append(exc)
                    failed.set()

            thread = threading.Thread(target=target, name=f"{self.context.name}-{name}")
            thread.start()
            return thread

        def forward() -> None:
            self.report = self.fanout.run(until_caught_up=self.until_caught_up)
            log.info("%s: fan-out finished: %s", self.context.name, self.report.to_dict())

        threads = [guarded("fanout", forward)]
        for i, pc in enumerate(drains):

            def drain(pc: Any = pc) -> None:
                try:
                    pc.run()
                finally:
                    close_consumer(pc.consumer)

            threads.append(guarded(f"drain-{i}", drain))
        # Until stopped, a part fails, or everything ended by itself (a fan-out that caught up
        # with no drain consumers).
        while not stop.wait(0.2) and not failed.is_set():
            if not any(t.is_alive() for t in threads):
                break
        self.fanout.stop()
        for pc in drains:
            pc.stop()
        for thread in threads:
            thread.join()
        if self.errors:
            raise self.errors[0]


def backlog_fanout_job(options: dict[str, Any], context: JobContext) -> BacklogFanoutJob:
    """Factory for the ``backlog-fanout`` kind (see the module docstring for the options)."""
    kind = context.kind
    opts = take_options(options, _ALLOWED, kind, required={"from", "group", "to"})
    if context.periodic:
        raise RecipeError(f"{kind} is long-running: remove every/cron")
    base = context.recipe.parent if context.recipe is not None else Path.cwd()
    drain_consumers = int(opts.get("drain_consumers", 0))
    drain_group = str(opts.get("drain_group") or f"{opts['to']}.drain")
    handler = None
    if drain_consumers:
        if "drain_handler" not in opts:
            raise RecipeError(f"{kind}: drain_consumers needs drain_handler = 'module:function'")
        handler = load_callable(
            opts["drain_handler"],
            f"{kind}: drain_handler",
            python_path=opts.get("python_path"),
            context=context,
        )
        if opts.get("dedup"):
            from kops.recipes.idempotent import Idempotent

            store = str(opts["dedup"])
            if "://" not in store:
                store = str((base / store).resolve())
            handler = Idempotent(store, namespace=drain_group)(handler)
    try:
        rate = opts.get("rate")
        fanout = BacklogFanout(
            context.settings,
            str(opts["from"]),
            str(opts["group"]),
            str(opts["to"]),
            int(opts.get("partitions", 64)),
            rate=None if rate is None else float(rate),
            start=opts.get("start"),
            drain_group=drain_group,
            create=bool(opts.get("create", True)),
            replication_factor=opts.get("replication_factor"),
            exactly_once=bool(opts.get("exactly_once", False)),
        )
    except (ValueError, TypeError, KopsClientError) as exc:
        raise RecipeError(f"{kind}: {exc}") from None
    return BacklogFanoutJob(
        context,
        fanout,
        until_caught_up=bool(opts.get("until_caught_up", False)),
        drain_consumers=drain_consumers,
        drain_workers=max(int(opts.get("drain_workers", 1)), 1),
        drain_group=drain_group,
        handler=handler,
    )
