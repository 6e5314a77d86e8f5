"""DLQ replay with exactly_once: each dead letter lands in its target once for read_committed
readers, through aborted transactions, SIGKILLs of the replay (the next run resumes) and
SIGKILLs of the broker (the replay rides them out)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from kops import admin
from kops.recipes import headers as h
from kops.recipes.dlq import dead_letter_headers, replay, replay_state_topic
from kops.recipes.dlq.ops import load_markers
from kops.recipes.exactly_once import TransactionsUnsupported, read_committed
from kops.testing import BrokerProcess, wait_until
from tests.recipes.processes import (
    ChildProcess,
    assert_one_line_error,
    run_kops,
    wait_for_progress,
)
from tests.recipes.streams import end_offsets, read


def make_dlq(bootstrap: str, count: int, *, big: int = 0) -> tuple[str, str]:
    """A source topic and its DLQ of ``count`` dead letters (the first ``big`` of them
    with 4 kB values); returns (source, dlq)."""
    tag = uuid.uuid4().hex[:8]
    source, dlq = f"eos-src-{tag}", f"eos-src-{tag}.dlq"
    admin.create_topic(bootstrap, source, 2)
    admin.create_topic(bootstrap, dlq, 2)
    records = []
    for i in range(count):
        headers = dead_letter_headers(
            [], ValueError("boom"), topic=source, partition=i % 2, offset=i, timestamp_ms=None,
            group="billing", attempts=1, first_failure_ms=0, reason="fatal",
        )  # fmt: skip
        value = b"x" * 4000 if i < big else f"v{i}".encode()
        records.append((f"k{i:04d}".encode(), value, headers))
    produce_dead_letters(bootstrap, dlq, records)
    return source, dlq


def produce_dead_letters(bootstrap: str, dlq: str, records: list) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        p.produce(dlq, value, key=key, headers=headers)
    assert p.flush(10) == 0


def replays(bootstrap: str, topic: str, *, committed: bool = True) -> Counter[str]:
    """Copies in ``topic`` per dead letter (``kops.replay.of``)."""
    return Counter(
        h.get(r.headers, h.REPLAY_OF) or "" for r in read(bootstrap, topic, committed=committed)
    )


def assert_each_once(found: Counter[str], count: int) -> None:
    twice = {k: n for k, n in found.items() if n > 1}
    assert not twice, f"{len(twice)} dead letters replayed more than once, e.g. {twice}"
    assert len(found) == count, f"{count - len(found)} of {count} dead letters not replayed"


def test_replay_once_in_transactions_and_a_second_run_replays_nothing(kafka_broker: str) -> None:
    source, dlq = make_dlq(kafka_broker, 60)
    report = replay(kafka_broker, dlq, rate=None, exactly_once=True)
    assert (report.replayed, report.in_doubt) == (60, 0), report.summary()
    assert_each_once(replays(kafka_broker, source), 60)
    markers = load_markers(kafka_broker, dlq, config=read_committed({}))
    assert len(markers) == 60 and set(markers.values()) == {"done"}
    # The markers were written in transactions: their commit markers take offsets too.
    assert sum(end_offsets(kafka_broker, replay_state_topic(dlq)).values()) > 60
    again = replay(kafka_broker, dlq, rate=None, exactly_once=True)
    assert (again.replayed, again.already_replayed) == (0, 60), again.summary()
    assert_each_once(replays(kafka_broker, source), 60)


def test_an_aborted_batch_is_invisible_and_sent_again(kafka_broker: str) -> None:
    source, dlq = make_dlq(kafka_broker, 20, big=1)
    # The target refuses the big record until the test raises its limit: each transaction
    # of the batch holding it aborts, with the records sent along with it.
    admin.alter_topic_configs(kafka_broker, source, {"max.message.bytes": "2000"})
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(replay(kafka_broker, dlq, rate=None, exactly_once=True)),
        daemon=True,
    )
    thread.start()
    wait_until(
        lambda: replays(kafka_broker, source, committed=False).total() > 0,
        30,
        message="records of an aborted transaction in the target's log",
    )
    assert not replays(kafka_broker, source), "records of an aborted transaction are visible"
    admin.alter_topic_configs(kafka_broker, source, {"max.message.bytes": "1048588"})
    thread.join(60)
    assert not thread.is_alive()
    assert result and result[0].replayed == 20, result  # type: ignore[attr-defined]
    assert_each_once(replays(kafka_broker, source), 20)
    assert replays(kafka_broker, source, committed=False).total() > 20


def _replay_run(bootstrap: str, count: int, rate: int) -> tuple[str, str, ChildProcess]:
    """A DLQ of ``count`` dead letters and ``kops dlq replay --exactly-once`` of it at
    ``rate`` per second, not started yet: (source, dlq, the run)."""
    source, dlq = make_dlq(bootstrap, count)
    args = ["dlq", "replay", dlq, "--exactly-once", "--rate", str(rate)]
    return source, dlq, ChildProcess(bootstrap, args)


def _wait_for_replay(run: ChildProcess, bootstrap: str, source: str, rng: random.Random) -> None:
    wait_for_progress(
        lambda: run.alive() and sum(end_offsets(bootstrap, source).values()),
        rng,
        run.log,
        what="the replay made progress",
    )


def _rerun_finishes(bootstrap: str, source: str, dlq: str, count: int, before: int) -> None:
    """A re-run (``--json``) finds the ``before`` dead letters replayed before it, replays
    the rest: nothing in doubt, each dead letter in the target once."""
    result = run_kops(bootstrap, "dlq", "replay", dlq, "--exactly-once", "--rate", "0", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["in_doubt"] == 0, report
    assert report["already_replayed"] == before, report
    assert report["replayed"] + report["already_replayed"] == count, report
    assert_each_once(replays(bootstrap, source), count)


def _replay_kills(kafka_broker: str, kills: int) -> None:
    count = 200 + 60 * kills  # each run is killed long before it is through them
    source, dlq, run = _replay_run(kafka_broker, count, 150)
    rng = random.Random(kills)
    started = time.monotonic()
    for _ in range(kills):
        run.start()
        _wait_for_replay(run, kafka_broker, source, rng)
        run.kill()
    interrupted = replays(kafka_broker, source).total()
    # Resumed where the killed runs stopped: nothing in doubt, nothing sent twice.
    _rerun_finishes(kafka_broker, source, dlq, count, before=interrupted)
    print(
        f"{kills} kills, {count} dead letters ({interrupted} replayed before the last run): "
        f"each once, in {time.monotonic() - started:.1f}s"
    )


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_replay_sigkills_duplicate_and_lose_nothing(kafka_broker: str) -> None:
    _replay_kills(kafka_broker, kills=3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_twenty_replay_sigkills_duplicate_and_lose_nothing(kafka_broker: str) -> None:
    _replay_kills(kafka_broker, kills=20)


def _replay_under_broker_kills(broker: BrokerProcess, kills: int) -> None:
    """One replay rides out broker SIGKILLs (transactions the kills abort are redone) to
    its end, each dead letter once; a re-run finds them all replayed, none in doubt."""
    bootstrap = broker.bootstrap
    count = 100 + 200 * kills  # more than the run gets through before the last kill
    source, dlq, run = _replay_run(bootstrap, count, 40)
    rng = random.Random(kills + 100)
    started = time.monotonic()
    run.start()
    for _ in range(kills):
        _wait_for_replay(run, bootstrap, source, rng)
        broker.kill()
        broker.start()  # same port and data directory
    assert run.wait(120) == 0, run.log()
    assert f"replayed {count} of {count} matching" in run.log(), run.log()
    assert_each_once(replays(bootstrap, source), count)
    _rerun_finishes(bootstrap, source, dlq, count, before=count)
    print(
        f"{kills} broker kills, {count} dead letters: each once, in "
        f"{time.monotonic() - started:.1f}s"
    )


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_replay_rides_out_broker_sigkills(broker_process: BrokerProcess) -> None:
    _replay_under_broker_kills(broker_process, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replay_rides_out_twenty_broker_sigkills(broker_process: BrokerProcess) -> None:
    _replay_under_broker_kills(broker_process, kills=20)


def test_exactly_once_on_a_cluster_without_transactions(no_transactions_broker: str) -> None:
    admin.create_topic(no_transactions_broker, "orders.dlq", 1)
    with pytest.raises(TransactionsUnsupported, match="refused a transactional producer"):
        replay(no_transactions_broker, "orders.dlq", exactly_once=True)
    result = run_kops(no_transactions_broker, "dlq", "replay", "orders.dlq", "--exactly-once")
    assert_one_line_error(result, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")


def test_the_worker_stops_an_exactly_once_replay_job_for_good(
    no_transactions_broker: str, tmp_path: Path
) -> None:
    admin.create_topic(no_transactions_broker, "orders.dlq", 1)
    recipe = tmp_path / "replay.toml"
    recipe.write_text(
        '[[job]]\nname = "replay"\nkind = "dlq-replay"\nevery = "1s"\n'
        'topic = "orders.dlq"\nexactly_once = true\n'
    )
    result = run_kops(no_transactions_broker, "worker", "run", str(recipe))
    assert_one_line_error(result, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")
    # Stopped at its first run, without a traceback (assert_one_line_error), not rescheduled.
    assert result.stderr.count("kops.worker: job replay stopped") == 1, result.stderr
