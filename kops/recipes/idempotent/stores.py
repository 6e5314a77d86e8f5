"""Where the idempotent helper remembers which messages are in progress or done.

A key is in one of three states:

- absent (or expired): nobody has it; the next :meth:`claim` acquires it;
- ``in_progress`` with a lease (an owner token and a deadline): someone is working on it.
  Others get ``BUSY`` until the lease runs out; after that the next claim *takes it over* (the
  holder crashed or stalled), counting one more attempt;
- ``done`` until its time-to-live runs out: claims answer ``DONE`` (a duplicate).

A crash between claim and done therefore never marks a message done: it stays
``in_progress`` until its lease expires, and then it is processed again. This is the fix for
the classic mark-then-process race (a crash leaves the key set and the message is silently
skipped) without the process-then-mark race (two concurrent copies both run).

:class:`SQLiteStore` is the embedded default (one file, no server; safe for many threads and
processes on one machine). :class:`~kops.recipes.idempotent.redis_store.RedisStore` is the
shared store for consumers on many machines. Both implement :class:`DedupStore`.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from kops.errors import KopsError

__all__ = [
    "Busy",
    "Claim",
    "ClaimStatus",
    "DedupStore",
    "SQLiteStore",
    "Transaction",
]


class ClaimStatus(enum.Enum):
    ACQUIRED = "acquired"
    DONE = "done"
    BUSY = "busy"


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    #: Attempts made on this key so far, this one included (ACQUIRED only).
    attempts: int = 0
    #: True when an expired lease of an earlier owner was taken over.
    taken_over: bool = False


@runtime_checkable
class DedupStore(Protocol):
    """The operations the idempotent helper needs. ``token`` identifies one claim."""

    def claim(self, key: str, token: str, lease: float) -> Claim:
        """Acquire ``key`` for ``lease`` seconds unless it is done or leased by someone else."""
        ...

    def complete(self, key: str, token: str, ttl: float) -> bool:
        """Mark ``key`` done for ``ttl`` seconds. False if the claim was lost (taken over)."""
        ...

    def release(self, key: str, token: str) -> None:
        """Give up a claim after a failure, so the message is processed again."""
        ...

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend a live claim's lease. False if it was lost."""
        ...

    def state(self, key: str) -> str | None:
        """``"in_progress"``, ``"done"``, or None (absent or expired). For inspection."""
        ...

    def purge_expired(self) -> int:
        """Delete expired entries; returns how many."""
        ...

    def close(self) -> None: ...


@dataclass
class Transaction:
    """What :meth:`SQLiteStore.transaction` yields.

    ``db`` is the store's connection with a write transaction open: do the message's effects
    through it (no commit/rollback of your own). When ``duplicate`` is true the message was
    already applied: skip the effects; the transaction is rolled back.
    """

    db: sqlite3.Connection
    key: str
    duplicate: bool


class Busy(KopsError):
    """The key is leased by a live claim elsewhere (raised by the transactional path)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    key        TEXT PRIMARY KEY,
    state      TEXT NOT NULL,     -- 'in_progress' or 'done'
    token      TEXT,              -- owner of an in_progress claim
    expires_at REAL NOT NULL,     -- in_progress: end of the lease; done: end of the ttl
    attempts   INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {table}_expires ON {table} (expires_at);
"""


class SQLiteStore:
    """A dedup table in a SQLite file (the default store).

    One connection per thread (SQLite connections must not be shared between threads); WAL mode
    so readers never block the writer; every state change is one ``BEGIN IMMEDIATE``
    transaction, so claims from several processes on the same file are serialised by SQLite's
    write lock.

    ``path`` may be ``":memory:"`` only for single-threaded tests (each thread would get its
    own empty database).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "kops_idempotent",
        busy_timeout: float = 30.0,
        purge_every: float = 60.0,
    ) -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"invalid table name {table!r}")
        self.path = str(path)
        self.table = table
        self.busy_timeout = busy_timeout
        self.purge_every = purge_every
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._next_purge = time.time() + purge_every
        # executescript commits on its own; the DDL is idempotent.
        self.connection().executescript(_SCHEMA.format(table=table))

    # -- connections

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode: transactions are explicit)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode; only a power loss can
            # drop the last transactions, which then replay as redeliveries.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed already
                    db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- DedupStore

    def claim(self, key: str, token: str, lease: float) -> Claim:
        self._maybe_purge()
        now = time.time()
        with self._write() as db:
            row = db.execute(
                f"SELECT state, expires_at, attempts FROM {self.table} WHERE key = ?", (key,)
            ).fetchone()
            if row is not None and row[1] > now:
                return Claim(ClaimStatus.DONE if row[0] == "done" else ClaimStatus.BUSY)
            taken_over = row is not None and row[0] == "in_progress"
            attempts = row[2] + 1 if taken_over else 1
            db.execute(
                f"INSERT OR REPLACE INTO {self.table} "
                "(key, state, token, expires_at, attempts, updated_at) "
                "VALUES (?, 'in_progress', ?, ?, ?, ?)",
                (key, token, now + lease, attempts, now),
            )
            return Claim(ClaimStatus.ACQUIRED, attempts=attempts, taken_over=taken_over)

    def complete(self, key: str, token: str, ttl: float) -> bool:
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                f"UPDATE {self.table} SET state = 'done', token = NULL, expires_at = ?, "
                "updated_at = ? WHERE key = ? AND state = 'in_progress' AND token = ?",
                (now + ttl, now, key, token),
            )
            return cur.rowcount == 1

    def release(self, key: str, token: str) -> None:
        with self._write() as db:
            # Keep the row (with its attempt count) but let the next claim take it at once.
            db.execute(
                f"UPDATE {self.table} SET expires_at = 0, updated_at = ? "
                "WHERE key = ? AND state = 'in_progress' AND token = ?",
                (time.time(), key, token),
            )

    def renew(self, key: str, token: str, lease: float) -> bool:
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                f"UPDATE {self.table} SET expires_at = ?, updated_at = ? "
                "WHERE key = ? AND state = 'in_progress' AND token = ?",
                (now + lease, now, key, token),
            )
            return cur.rowcount == 1

    def state(self, key: str) -> str | None:
        row = (
            self.connection()
            .execute(f"SELECT state, expires_at FROM {self.table} WHERE key = ?", (key,))
            .fetchone()
        )
        if row is None or row[1] <= time.time():
            return None
        return str(row[0])

    def purge_expired(self) -> int:
        with self._write() as db:
            cur = db.execute(f"DELETE FROM {self.table} WHERE expires_at <= ?", (time.time(),))
            return cur.rowcount

    def _maybe_purge(self) -> None:
        if self.purge_every <= 0 or time.time() < self._next_purge:
            return
        self._next_purge = time.time() + self.purge_every
        self.purge_expired()

    # -- exactly-once recipe

    @contextmanager
    def transaction(self, key: str, ttl: float) -> Iterator[Transaction]:
        """One write transaction holding both the caller's effects and the done-mark.

        Either both commit or neither does: a crash anywhere inside leaves no effect and no
        mark, so the redelivered message is applied exactly once. SQLite's write lock is held
        for the whole block, which also serialises concurrent copies of the message. Raises
        :class:`Busy` if a lease-based claim (the non-transactional path) holds the key.
        """
        now = time.time()
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            row = db.execute(
                f"SELECT state, expires_at FROM {self.table} WHERE key = ?", (key,)
            ).fetchone()
            live = row is not None and row[1] > now
            if live and row[0] == "in_progress":
                raise Busy(key)
            tx = Transaction(db=db, key=key, duplicate=live)
            yield tx
            # A duplicate commits nothing: writes the caller made anyway are rolled back.
            if not tx.duplicate:
                db.execute(
                    f"INSERT OR REPLACE INTO {self.table} "
                    "(key, state, token, expires_at, attempts, updated_at) "
                    "VALUES (?, 'done', NULL, ?, 1, ?)",
                    (key, now + ttl, now),
                )
                db.execute("COMMIT")
                committed = True
        finally:
            if not committed:
                db.execute("ROLLBACK")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, table={self.table!r})"
