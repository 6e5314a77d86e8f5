"""Idempotent consumers: a handler's effect happens once per message, even when Kafka
delivers the message again (after a crash, a rebalance, a retried forward, a replay).

Two recipes, depending on where the effects go.

**At-least-once plus dedup (any effect: HTTP calls, emails, other databases).** The helper
claims the message in a store with a lease, runs the handler, then marks the message done::

    from kops.recipes.idempotent import Idempotent

    once = Idempotent("dedup.db", namespace="billing")   # a SQLite file; or a RedisStore

    @once
    def charge(record):
        payments.charge(parse(record.value()))

    for msg in consumer:            # confluent-kafka Message, or kafka-python/aiokafka record
        charge(msg)                 # runs the body at most once per message id...
        consumer.commit(msg)

A second delivery of a done message is skipped. A message whose handler raised is released and
runs again on its next delivery. If the process dies *inside* the handler, the claim stays
"in progress" until its lease (``lease=``, kept alive by a heartbeat while the handler runs)
expires; the next delivery then takes it over and runs the handler again. So nothing is ever
silently skipped; the price is that an effect interrupted between "done" in the outside world
and "done" in the store happens twice. That window is as small as one handler call, and it is
unavoidable when the effect and the mark live in different systems.

**Exactly once (effects in the same SQLite database).** When the handler's writes go to the
store's own SQLite file, the effects and the done-mark commit in one transaction: a crash
anywhere rolls back both, and a redelivery applies the message exactly once::

    store = SQLiteStore("app.db")
    once = Idempotent(store, namespace="ledger")

    @once.transactional
    def apply(record, db):          # db: a sqlite3 connection inside the open transaction
        db.execute("INSERT INTO ledger(account, amount) VALUES (?, ?)", parse(record.value()))

Do not call ``db.commit()`` or ``db.rollback()`` inside: the helper commits the effects together
with the mark, or rolls both back if the handler raises. ``examples/idempotent_consumer.py`` is a
complete consumer using this recipe.

**Identity** (see :func:`message_id`): the ``kops.message.id`` header, else ``key=`` (a function
of the record), else topic/partition/offset. ``namespace`` separates consumers that must each
apply the same message once (two groups reading one topic use two namespaces).

**Stores**: :class:`SQLiteStore` (default; a path is enough) for one machine,
:class:`~kops.recipes.idempotent.redis_store.RedisStore` for many. Done marks expire after
``ttl`` (default 7 days): keep it longer than any redelivery or replay you want caught.

**With other helpers**: the decorated function is a plain ``handler(record)``, so it plugs into
:class:`kops.recipes.parallel.KeyedExecutor` and into the DLQ wrapper. Wrap the DLQ inside
(``once(dlq(handler))``) to count a dead-lettered message as done; wrap it outside
(``dlq(once(handler))``) to retry it on its next delivery.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from kops.errors import KopsError
from kops.recipes.idempotent.records import KeyFunction, Record, as_record, message_id
from kops.recipes.idempotent.stores import (
    Busy,
    Claim,
    ClaimStatus,
    DedupStore,
    SQLiteStore,
    Transaction,
)
from kops.recipes.metrics import IDEMPOTENT_DUPLICATES, IDEMPOTENT_LEASES_EXPIRED

__all__ = [
    "Busy",
    "Claim",
    "ClaimStatus",
    "DedupStore",
    "Idempotent",
    "MessageBusy",
    "Outcome",
    "Record",
    "SQLiteStore",
    "Stats",
    "Transaction",
    "as_record",
    "message_id",
    "open_store",
]

log = logging.getLogger(__name__)
R = TypeVar("R")

DEFAULT_LEASE = 30.0
DEFAULT_TTL = 7 * 86400.0


class MessageBusy(KopsError):
    """Another live consumer holds the message and ``busy="raise"`` (or the wait timed out)."""


@dataclass
class Outcome:
    """What :meth:`Idempotent.process` did with one record."""

    key: str
    #: ``"processed"`` (the handler ran and the message is now done) or ``"duplicate"``.
    status: Literal["processed", "duplicate"]
    result: Any = None
    attempts: int = 0
    taken_over: bool = False
    #: The lease was lost while the handler ran (it stalled longer than the lease and another
    #: consumer took the message over): the effect may have happened twice.
    lost_claim: bool = False

    @property
    def duplicate(self) -> bool:
        return self.status == "duplicate"


@dataclass
class Stats:
    processed: int = 0
    duplicates: int = 0
    failures: int = 0
    taken_over: int = 0
    busy_waits: int = 0
    lost_claims: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: Count name -> Prometheus counter child it also feeds (see :meth:`export`).
    _metrics: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def export(self, store: str) -> Stats:
        """Feed duplicates and take-overs (a lease that expired) into the
        ``kops_idempotent_*`` counters, labelled ``store``."""
        self._metrics = {
            "duplicates": IDEMPOTENT_DUPLICATES.labels(store=store),
            "taken_over": IDEMPOTENT_LEASES_EXPIRED.labels(store=store),
        }
        return self

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)
                if n and name in self._metrics:
                    self._metrics[name].inc(n)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def open_store(target: DedupStore | str | Path) -> DedupStore:
    """A store from a store, a SQLite path, or a ``redis://`` / ``rediss://`` URL."""
    if isinstance(target, str) and target.startswith(("redis://", "rediss://", "unix://")):
        from kops.recipes.idempotent.redis_store import RedisStore

        return RedisStore.from_url(target)
    if isinstance(target, str | Path):
        return SQLiteStore(target)
    return target


class Idempotent:
    """Run a handler once per message id: never again once done, never skipped unfinished.

    ``store``: a :class:`DedupStore`, a SQLite path, or a ``redis://`` URL.
    ``key``: identity for records without a ``kops.message.id`` header.
    ``lease``: seconds a claim stays exclusive without a heartbeat; a heartbeat thread renews
    it every ``lease/3`` while the handler runs, so only a dead or frozen process loses it.
    ``ttl``: seconds a done mark is remembered.
    ``busy``: what to do when another live consumer holds the message: ``"wait"`` (default)
    until it is done (then it is a duplicate) or its lease expires (then take it over);
    ``"raise"`` :class:`MessageBusy`; ``busy_timeout`` bounds the wait.
    """

    def __init__(
        self,
        store: DedupStore | str | Path,
        *,
        key: KeyFunction | None = None,
        namespace: str = "default",
        lease: float = DEFAULT_LEASE,
        ttl: float = DEFAULT_TTL,
        busy: Literal["wait", "raise"] = "wait",
        busy_timeout: float | None = None,
    ) -> None:
        if lease <= 0 or ttl <= 0:
            raise ValueError("lease and ttl must be positive")
        if busy not in ("wait", "raise"):
            raise ValueError(f"busy must be 'wait' or 'raise', got {busy!r}")
        self.store = open_store(store)
        self.key = key
        self.namespace = namespace
        self.lease = lease
        self.ttl = ttl
        self.busy = busy
        self.busy_timeout = busy_timeout
        self.stats = Stats().export(namespace)
        self._active: dict[str, tuple[str, list[bool]]] = {}  # token -> (key, [lost])
        self._active_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._closed = threading.Event()

    # -- identity

    def identity(self, record: Any) -> str:
        """The store key of a record: ``namespace|`` + :func:`message_id`."""
        return f"{self.namespace}|{message_id(record, self.key)}"

    # -- lease-based path

    @contextmanager
    def claim(self, record: Any) -> Iterator[Outcome]:
        """Claim a record for the block: skip the block's effects when ``outcome.duplicate``.

        Normal exit marks the message done; an exception releases the claim (the message will
        run again) and propagates::

            with once.claim(msg) as outcome:
                if not outcome.duplicate:
                    send_email(msg)
        """
        key = self.identity(record)
        token = uuid.uuid4().hex
        claim = self._acquire(key, token)
        if claim.status is ClaimStatus.DONE:
            self.stats.add(duplicates=1)
            yield Outcome(key, "duplicate")
            return
        lost = self._track(token, key)
        outcome = Outcome(key, "processed", attempts=claim.attempts, taken_over=claim.taken_over)
        try:
            yield outcome
        except BaseException:
            self._untrack(token)
            self.stats.add(failures=1)
            try:
                self.store.release(key, token)
            except Exception:  # the lease will expire anyway; keep the handler's error
                log.warning("could not release claim on %s", key, exc_info=True)
            raise
        self._untrack(token)
        if not self.store.complete(key, token, self.ttl) or lost[0]:
            outcome.lost_claim = True
            self.stats.add(lost_claims=1)
            log.warning(
                "claim on %s was lost while the handler ran (longer than the %.1fs lease "
                "without a heartbeat?); its effect may have happened twice",
                key,
                self.lease,
            )
        self.stats.add(processed=1, taken_over=int(claim.taken_over))

    def process(self, record: Any, handler: Callable[..., R], *args: Any, **kwargs: Any) -> Outcome:
        """Run ``handler(record, *args, **kwargs)`` unless the message is already done."""
        with self.claim(record) as outcome:
            if outcome.duplicate:
                return outcome
            outcome.result = handler(record, *args, **kwargs)
        return outcome

    def __call__(self, handler: Callable[..., R]) -> Callable[..., R | None]:
        """Decorator: the wrapped handler returns the handler's result, or None for a duplicate."""

        @functools.wraps(handler)
        def wrapper(record: Any, *args: Any, **kwargs: Any) -> R | None:
            return self.process(record, handler, *args, **kwargs).result

        wrapper.idempotent = self  # type: ignore[attr-defined]
        return wrapper

    def _acquire(self, key: str, token: str) -> Claim:
        deadline = None if self.busy_timeout is None else time.monotonic() + self.busy_timeout
        delay = 0.02
        waited = False
        while True:
            claim = self.store.claim(key, token, self.lease)
            if claim.status is not ClaimStatus.BUSY:
                return claim
            if self.busy == "raise" or (deadline is not None and time.monotonic() > deadline):
                raise MessageBusy(f"message {key} is being processed by another consumer")
            if not waited:
                waited = True
                self.stats.add(busy_waits=1)
            # The holder finishes (we then see DONE) or dies (its lease runs out): poll with
            # backoff, never longer than a tenth of the lease so a take-over is prompt.
            time.sleep(delay)
            delay = min(delay * 2, max(self.lease / 10, 0.05), 1.0)

    # -- heartbeat: keeps leases of running handlers alive

    def _track(self, token: str, key: str) -> list[bool]:
        lost = [False]
        with self._active_lock:
            self._active[token] = (key, lost)
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._beat, name="kops-idempotent-heartbeat", daemon=True
                )
                self._heartbeat.start()
        return lost

    def _untrack(self, token: str) -> None:
        with self._active_lock:
            self._active.pop(token, None)

    def _beat(self) -> None:
        while not self._closed.wait(self.lease / 3):
            with self._active_lock:
                if not self._active:
                    # Idle: end the thread; the next claim starts a new one (same lock).
                    self._heartbeat = None
                    return
                active = list(self._active.items())
            for token, (key, lost) in active:
                try:
                    if not self.store.renew(key, token, self.lease):
                        lost[0] = True
                except Exception:
                    log.warning("lease renewal failed for %s", key, exc_info=True)
        with self._active_lock:
            self._heartbeat = None

    def close(self) -> None:
        """Stop the heartbeat and close the store."""
        self._closed.set()
        self.store.close()

    def __enter__(self) -> Idempotent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- exactly-once path (SQLite store, effects in the same database)

    @contextmanager
    def atomic(self, record: Any) -> Iterator[Transaction]:
        """The effects of one record and its done-mark in one SQLite transaction.

        Yields a :class:`Transaction`: write through ``tx.db`` unless ``tx.duplicate``.
        Waits (or raises, per ``busy``) while a lease-based claim holds the message.
        """
        store = self.store
        if not isinstance(store, SQLiteStore):
            raise TypeError("atomic()/transactional need a SQLiteStore")
        key = self.identity(record)
        deadline = None if self.busy_timeout is None else time.monotonic() + self.busy_timeout
        yielded = False
        while True:
            try:
                with store.transaction(key, self.ttl) as tx:
                    yielded = True
                    yield tx
                    duplicate = tx.duplicate
            except Busy:
                if yielded:
                    raise
                if self.busy == "raise" or (deadline is not None and time.monotonic() > deadline):
                    raise MessageBusy(
                        f"message {key} is being processed by another consumer"
                    ) from None
                self.stats.add(busy_waits=1)
                time.sleep(min(self.lease / 10, 0.5))
                continue
            except BaseException:
                self.stats.add(failures=1)
                raise
            self.stats.add(**({"duplicates": 1} if duplicate else {"processed": 1}))
            return

    def transactional(self, handler: Callable[..., R]) -> Callable[..., R | None]:
        """Decorator for ``handler(record, db)``; see :meth:`atomic`. Returns None for a duplicate."""

        @functools.wraps(handler)
        def wrapper(record: Any, *args: Any, **kwargs: Any) -> R | None:
            with self.atomic(record) as tx:
                if tx.duplicate:
                    return None
                return handler(record, tx.db, *args, **kwargs)
            raise AssertionError("unreachable")  # atomic() yields exactly once

        wrapper.idempotent = self  # type: ignore[attr-defined]
        return wrapper
