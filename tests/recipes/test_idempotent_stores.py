"""The dedup stores' contract (SQLite and Redis) and the Idempotent helper without a broker."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kops.recipes.headers import MESSAGE_ID
from kops.recipes.idempotent import (
    ClaimStatus,
    DedupStore,
    Idempotent,
    MessageBusy,
    Record,
    SQLiteStore,
    as_record,
    message_id,
)
from kops.testing import free_port, wait_until

# --------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server on a free loopback port (CI installs it via .ci/run); skips the
    test when redis-server or the redis package is missing."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the 'redis' package (kops[redis] extra) is missing")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    try:
        wait_until(accepting, 10, message="redis-server to accept connections")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DedupStore]:
    if request.param == "sqlite":
        s: DedupStore = SQLiteStore(tmp_path / "dedup.db")
    else:
        from kops.recipes.idempotent.redis_store import RedisStore

        url = request.getfixturevalue("redis_url")
        s = RedisStore.from_url(url, prefix=f"t{time.monotonic_ns()}:")
    yield s
    s.close()


def rec(offset: int = 0, *, msg_id: str | None = None, key: bytes | None = None) -> Record:
    headers = ((MESSAGE_ID, msg_id.encode()),) if msg_id else ()
    return Record("orders", 0, offset, key=key, value=b"v", headers=headers)


# --------------------------------------------------------------------------- store contract


def test_claim_then_done_is_a_duplicate(store: DedupStore) -> None:
    assert store.claim("k", "a", 10).status is ClaimStatus.ACQUIRED
    assert store.state("k") == "in_progress"
    assert store.claim("k", "b", 10).status is ClaimStatus.BUSY
    assert store.complete("k", "a", 60)
    assert store.state("k") == "done"
    assert store.claim("k", "c", 10).status is ClaimStatus.DONE


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_complete(store: DedupStore) -> None:
    assert store.claim("k", "a", 0.05).status is ClaimStatus.ACQUIRED
    time.sleep(0.12)  # not polling: the lease must run out on the clock
    claim = store.claim("k", "b", 10)
    assert claim.status is ClaimStatus.ACQUIRED
    assert claim.taken_over and claim.attempts == 2
    assert not store.complete("k", "a", 60)  # the crashed/stalled owner lost it
    assert not store.renew("k", "a", 10)
    assert store.complete("k", "b", 60)
    assert store.state("k") == "done"


def test_release_lets_the_next_claim_run_again(store: DedupStore) -> None:
    store.claim("k", "a", 30)
    store.release("k", "a")
    assert store.state("k") is None
    claim = store.claim("k", "b", 30)
    assert claim.status is ClaimStatus.ACQUIRED and claim.attempts == 2


def test_renew_extends_the_lease(store: DedupStore) -> None:
    store.claim("k", "a", 0.3)
    for _ in range(4):
        time.sleep(0.1)  # not polling: 0.4 s in all, past the first 0.3 s lease
        assert store.renew("k", "a", 0.3)
    assert store.claim("k", "b", 1).status is ClaimStatus.BUSY


def test_done_marks_expire(store: DedupStore) -> None:
    store.claim("k", "a", 10)
    store.complete("k", "a", 0.05)
    time.sleep(0.12)  # not polling: the done mark must expire on the clock
    assert store.state("k") is None
    store.purge_expired()
    assert store.claim("k", "b", 10).status is ClaimStatus.ACQUIRED


def test_only_one_of_many_concurrent_claims_wins(store: DedupStore) -> None:
    results: list[ClaimStatus] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        status = store.claim("race", f"t{i}", 30).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(ClaimStatus.ACQUIRED) == 1
    assert results.count(ClaimStatus.BUSY) == 7


# --------------------------------------------------------------------------- helper


def test_decorator_runs_once_per_message_id(tmp_path: Path) -> None:
    calls: list[int] = []
    once = Idempotent(tmp_path / "d.db")

    @once
    def handle(record: Record) -> str:
        calls.append(record.offset)
        return "ok"

    assert handle(rec(1, msg_id="m1")) == "ok"
    # Same id at another offset (a retried or re-forwarded copy): skipped.
    assert handle(rec(7, msg_id="m1")) is None
    assert handle(rec(2, msg_id="m2")) == "ok"
    assert calls == [1, 2]
    assert once.stats.processed == 2 and once.stats.duplicates == 1


def test_identity_order_header_then_key_function_then_position() -> None:
    by_value = lambda r: r.value  # noqa: E731
    assert message_id(rec(3, msg_id="abc"), by_value) == "id:abc"
    assert message_id(rec(3), by_value) == "key:v"
    assert message_id(rec(3), lambda r: None) == "pos:orders/0/3"
    assert message_id(rec(3)) == "pos:orders/0/3"


def test_failed_handler_is_released_and_runs_again(tmp_path: Path) -> None:
    once = Idempotent(tmp_path / "d.db")
    attempts: list[int] = []

    @once
    def flaky(record: Record) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        flaky(rec(1))
    flaky(rec(1))
    flaky(rec(1))
    assert len(attempts) == 2
    assert once.stats.failures == 1 and once.stats.duplicates == 1


def test_crashed_claim_is_taken_over_after_its_lease(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    # A "crashed" consumer: claimed, never completed, never released.
    assert SQLiteStore(path).claim("default|pos:orders/0/5", "dead", 0.2).status is (
        ClaimStatus.ACQUIRED
    )
    once = Idempotent(path, lease=0.2)
    t0 = time.monotonic()
    outcome = once.process(rec(5), lambda r: "again")
    assert outcome.status == "processed" and outcome.result == "again"
    assert outcome.taken_over and outcome.attempts == 2
    assert time.monotonic() - t0 < 2


def test_busy_raise_and_heartbeat_keeps_a_slow_handler_exclusive(tmp_path: Path) -> None:
    once = Idempotent(tmp_path / "d.db", lease=0.3, busy="raise")
    started = threading.Event()

    def slow(record: Record) -> None:
        started.set()
        time.sleep(1.0)  # over three leases: only the heartbeat keeps the claim

    t = threading.Thread(target=once.process, args=(rec(1), slow))
    t.start()
    started.wait(5)
    time.sleep(0.5)  # not polling: past the 0.3 s lease, so only the heartbeat holds it
    with pytest.raises(MessageBusy):
        once.process(rec(1), lambda r: None)
    t.join()
    assert once.stats.lost_claims == 0
    assert once.process(rec(1), lambda r: None).duplicate


def test_busy_wait_sees_the_holder_finish(tmp_path: Path) -> None:
    once = Idempotent(tmp_path / "d.db", lease=5)
    started = threading.Event()
    calls: list[str] = []

    def slow(record: Record) -> None:
        started.set()
        time.sleep(0.3)  # a slow handler: the second process() must wait for it
        calls.append("first")

    t = threading.Thread(target=once.process, args=(rec(1), slow))
    t.start()
    started.wait(5)
    outcome = once.process(rec(1), lambda r: calls.append("second"))
    t.join()
    assert outcome.duplicate and calls == ["first"]
    assert once.stats.busy_waits == 1


def test_claim_context_manager(tmp_path: Path) -> None:
    once = Idempotent(tmp_path / "d.db")
    sent: list[int] = []
    for offset in (1, 1, 2):
        with once.claim(rec(offset)) as outcome:
            if not outcome.duplicate:
                sent.append(offset)
    assert sent == [1, 2]


def test_transactional_commits_effect_and_mark_together(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "app.db")
    store.connection().execute("CREATE TABLE effects (offset INTEGER)")
    once = Idempotent(store)

    @once.transactional
    def apply(record: Record, db) -> int:  # type: ignore[no-untyped-def]
        db.execute("INSERT INTO effects VALUES (?)", (record.offset,))
        if record.value == b"crash":
            raise RuntimeError("crash after the write")
        return record.offset

    assert apply(rec(1)) == 1
    assert apply(rec(1)) is None
    bad = Record("orders", 0, 2, value=b"crash")
    with pytest.raises(RuntimeError):
        apply(bad)
    rows = [r[0] for r in store.connection().execute("SELECT offset FROM effects")]
    assert rows == [1]  # the crashed write was rolled back with its mark
    assert store.state(once.identity(bad)) is None


def test_store_from_url_and_path(tmp_path: Path, redis_url: str) -> None:
    from kops.recipes.idempotent.redis_store import RedisStore

    with Idempotent(redis_url, namespace=f"n{time.monotonic_ns()}") as once:
        assert isinstance(once.store, RedisStore)
        assert once.process(rec(1), lambda r: 1).result == 1
        assert once.process(rec(1), lambda r: 1).duplicate
    with Idempotent(str(tmp_path / "x.db")) as once:
        assert isinstance(once.store, SQLiteStore)


# --------------------------------------------------------------------------- adapters


def test_records_from_other_clients() -> None:
    from aiokafka.structs import ConsumerRecord as AioRecord
    from kafka.consumer.fetcher import ConsumerRecord as KpRecord

    kp = KpRecord("t", 1, -1, 9, 1700000000000, 0, b"k", b"v", [(MESSAGE_ID, b"x1")], None, 1, 1, 1)
    aio = AioRecord("t", 1, 9, 1700000000000, 0, b"k", b"v", None, 1, 1, [(MESSAGE_ID, b"x1")])
    for raw in (kp, aio):
        r = as_record(raw)
        assert (r.topic, r.partition, r.offset, r.key, r.value) == ("t", 1, 9, b"k", b"v")
        assert r.timestamp == 1700000000000 and r.raw is raw
        assert message_id(raw) == "id:x1"
    with pytest.raises(TypeError):
        as_record(object())


def test_a_frozen_holder_loses_its_claim_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    frozen = Idempotent(path, lease=0.2)
    frozen.store.renew = lambda *a: True  # type: ignore[method-assign]  # heartbeat stalls
    other = Idempotent(path, lease=5)
    calls: list[str] = []

    def slow(record: Record) -> None:
        calls.append("frozen")
        time.sleep(0.4)  # past the lease: the other consumer takes the message over
        taken = other.process(record, lambda r: calls.append("other"))
        assert taken.taken_over and taken.attempts == 2

    outcome = frozen.process(rec(1), slow)
    assert outcome.lost_claim and frozen.stats.lost_claims == 1
    assert calls == ["frozen", "other"]  # at least once: the effect ran twice, reported
    assert frozen.store.state(frozen.identity(rec(1))) == "done"
