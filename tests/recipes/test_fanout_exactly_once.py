"""Backlog fan-out with exactly_once: every source record once in the target (read with
read_committed), keys on their partition, through aborted rounds, SIGKILLs of the fan-out and SIGKILLs of the broker.

The default run kills the fan-out 3 times and the broker twice; ``-m slow`` kills each 20
times.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kops import admin
from kops.client import ClientSettings
from kops.recipes.exactly_once import ProducerFenced, TransactionsUnsupported
from kops.recipes.fanout import BacklogFanout, backlog_status, fanout, partition_for_key
from kops.recipes.fanout.transactional import FanoutTransactions
from kops.testing import wait_until
from kops.transactions import abort_transaction, describe_transaction
from tests.recipes.broker_kills import kill_at_progress, killable_broker, records_in
from tests.recipes.processes import ChildProcess, assert_one_line_error
from tests.recipes.streams import Feeder, read
from tests.recipes.test_fanout import (
    _assert_key_order,
    _committed,
    _produce_backlog,
)


def assert_each_source_record_once(bootstrap: str, source: str, target: str, parts: int) -> None:
    """The target, read with read_committed, holds every source record once (values are
    unique), each key on its murmur2 partition and in order."""
    copies = read(bootstrap, target)
    values = Counter(m.value.decode() for m in copies)
    expected = {m.value.decode() for m in read(bootstrap, source)}
    twice = {v: n for v, n in values.items() if n > 1}
    missing = expected - set(values)
    assert not missing, (
        f"{len(missing)} of {len(expected)} source records lost: {sorted(missing)[:5]}"
    )
    assert not twice, f"{len(twice)} source records forwarded more than once"
    assert set(values) == expected
    for m in copies:
        assert m.partition == partition_for_key(m.key, parts), m.key
    _assert_key_order([m.value.decode() for m in copies])


def _topics() -> tuple[str, str, str]:
    source = f"eof-{uuid.uuid4().hex[:8]}"
    return source, f"{source}.fo", f"g-{source}"


def test_exactly_once_fanout_forwards_each_record_once(kafka_broker: str) -> None:
    source, target, group = _topics()
    _produce_backlog(kafka_broker, source, 6000)
    report = fanout(
        kafka_broker, source, group, target, 8, start="earliest", drain_group=f"{target}.d",
        exactly_once=True, commit_interval=0.2,
    )  # fmt: skip
    assert report.caught_up and report.forwarded == report.backlog == 6000
    assert_each_source_record_once(kafka_broker, source, target, 8)
    # The offsets went with the transactions, commit metadata included (backlog status).
    assert sum(_committed(kafka_broker, group, source).values()) == 6000
    status = backlog_status(kafka_broker, group)
    assert status.target == target and status.target_partitions == 8
    assert any(f"{target}.d" in note for note in status.notes)  # the drain group, recorded
    assert status.source.total_lag == 0
    txn = describe_transaction(kafka_broker, f"kops.fanout.{group}.{source}")
    assert txn.state == "CompleteCommit"


def test_aborted_rounds_are_forwarded_again(
    kafka_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round whose transaction aborts is read again from the last commit: nothing of it
    shows, and its records arrive once, with the next rounds."""
    source, target, group = _topics()
    _produce_backlog(kafka_broker, source, 3000)
    commit = FanoutTransactions.commit
    aborted: list[int] = []

    def abort_every_other(self: FanoutTransactions, offsets: Any) -> int | None:
        if self.sender.open and len(aborted) < 4 and self.sender.committed % 2 == 1:
            self.acked = 0
            self.sender.abort()  # a real abort: the broker writes the markers
            aborted.append(len(offsets))
            return None
        return commit(self, offsets)

    monkeypatch.setattr(FanoutTransactions, "commit", abort_every_other)
    report = fanout(
        kafka_broker, source, group, target, 4, start="earliest", exactly_once=True,
        commit_interval=0.05, rate=6000,
    )  # fmt: skip
    assert len(aborted) == 4, "rounds were aborted"
    assert report.caught_up and report.forwarded == 3000
    assert_each_source_record_once(kafka_broker, source, target, 4)
    # The aborted records are in the log (a read_uncommitted reader sees them twice).
    assert (
        sum(p.end_offset or 0 for p in admin.describe_topic(kafka_broker, target).partitions) > 3000
    )


def test_a_fenced_fanout_stops_with_a_clear_error(kafka_broker: str) -> None:
    source, target, group = _topics()
    _produce_backlog(kafka_broker, source, 4000)
    job = BacklogFanout(
        kafka_broker, source, group, target, 4, start="earliest", rate=500, exactly_once=True,
        commit_interval=0.2,
    )  # fmt: skip
    failure: list[BaseException] = []

    def run() -> None:
        try:
            job.run()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sum(_committed(kafka_broker, group, source).values()) > 0, 30)
        # What a second fan-out of the group does when it starts: fence this one.
        abort_transaction(kafka_broker, f"kops.fanout.{group}.{source}")
        thread.join(30)
    finally:
        job.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], ProducerFenced), failure
    assert f"another process took transactional id kops.fanout.{group}.{source}" in str(failure[0])


def test_recipe_job_with_exactly_once_drains_each_record_once(
    kafka_broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kops.worker.registry import JobContext, job_factory

    source, target, group = _topics()
    _produce_backlog(kafka_broker, source, 2000)
    options = {
        "from": source, "group": group, "to": target, "partitions": 6, "start": "earliest",
        "exactly_once": True, "drain_consumers": 2, "drain_workers": 2,
        "drain_handler": "kops.recipes.fanout:print_record",
    }  # fmt: skip
    context = JobContext(ClientSettings(kafka_broker), "eos-fanout", "backlog-fanout")
    job = job_factory("backlog-fanout")(options, context)
    assert job.fanout.exactly_once
    stop = threading.Event()
    thread = threading.Thread(target=job.run, args=(stop,))
    thread.start()
    printed: list[str] = []
    try:

        def drained() -> bool:
            printed.extend(line for line in capsys.readouterr().out.splitlines() if "key=" in line)
            return len(printed) >= 2000

        wait_until(drained, 60, message=lambda: f"{len(printed)} of 2000 drained")
    finally:
        stop.set()
        thread.join(30)
    assert not job.errors
    printed += [line for line in capsys.readouterr().out.splitlines() if "key=" in line]
    assert len(printed) == len(set(printed)) == 2000  # topic[partition]@offset: each once


# --------------------------------------------------------------------------- SIGKILL


def _target_end(bootstrap: str, target: str) -> int:
    """Records written to the target so far, committed, open or aborted."""
    return sum(p.end_offset or 0 for p in admin.describe_topic(bootstrap, target).partitions)


def _fanout_kills(bootstrap: str, kills: int) -> None:
    source, target, group = _topics()
    records = 2000 + 1500 * kills  # outlasts the kills at --rate 1500
    _produce_backlog(bootstrap, source, records)
    args = ["backlog", "fanout", "--from", source, "--group", group, "--to", target]
    args += ["--partitions", "8", "--start", "earliest", "--exactly-once"]
    fan = ChildProcess(bootstrap, [*args, "--rate", "1500"])
    rng = random.Random(kills)
    admin.create_topic(bootstrap, target, 8)  # the first kill may come before it would
    fan.start()

    def resumed_from() -> int:
        return sum(_committed(bootstrap, group, source).values())

    for i in range(kills):
        if i % 2:
            # Every other run commits a round first, so the next one resumes from it (the
            # others may be killed in their first round, with nothing committed).
            start = resumed_from()
            wait_until(lambda start=start: resumed_from() > start, 30, message=fan.log)
        # Until the target grew by a random few records: the kill falls at a random point
        # of a running round (mid-produce, mid-commit, just after one).
        want = _target_end(bootstrap, target) + rng.randint(5, 1200)
        wait_until(
            lambda want=want: _target_end(bootstrap, target) >= want,
            30,
            message=lambda: "the fan-out to forward; its log:\n" + fan.log(),
        )
        fan.kill()
        fan.start()
    fan.kill()
    assert resumed_from() < records, "killed while draining, not after"
    finish = ChildProcess(bootstrap, [*args, "--until-caught-up", "--json"])
    finished = finish.run()
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["caught_up"]
    assert_each_source_record_once(bootstrap, source, target, 8)
    again = finish.run()
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["forwarded"] == 0  # nothing left, nothing sent again


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_fanout_sigkills_duplicate_and_lose_nothing(kafka_broker: str) -> None:
    _fanout_kills(kafka_broker, kills=3)


@pytest.mark.slow
def test_twenty_fanout_sigkills_duplicate_and_lose_nothing(kafka_broker: str) -> None:
    _fanout_kills(kafka_broker, kills=20)


# --------------------------------------------------------------------------- broker SIGKILL


class SourceFeeder(Feeder):
    """New source records while the fan-out runs: value ``feed-<k>|<seq>`` over 7 keys of
    their own, so the key-order check holds for them too."""

    def __init__(self, bootstrap: str, source: str, rate: float = 50.0):
        super().__init__(bootstrap, rate)
        self.source = source

    def send(self, i: int) -> None:
        key = f"feed-{i % 7}"
        self.producer.produce(self.source, key=key.encode(), value=f"{key}|{i // 7}".encode())


def _fanout_broker_kills(tmp_path: Path, kills: int) -> None:
    with killable_broker(tmp_path) as broker:
        bootstrap = broker.bootstrap
        source, target, group = _topics()
        backlog = 3000 + 3000 * kills  # still draining at the last kill, at --rate 1000
        _produce_backlog(bootstrap, source, backlog)
        admin.create_topic(bootstrap, target, 8)
        fan = ChildProcess(
            bootstrap,
            ["backlog", "fanout", "--from", source, "--group", group, "--to", target,
             "--partitions", "8", "--start", "earliest", "--exactly-once", "--rate", "1000"],
        )  # fmt: skip
        fan.start()

        def committed() -> int:
            return sum(_committed(bootstrap, group, source).values())

        with SourceFeeder(bootstrap, source):
            kill_at_progress(
                broker, kills, lambda: records_in(bootstrap, target), random.Random(kills),
                step=(5, 800), log=fan.log,
            )  # fmt: skip
            assert committed() < backlog, "the backlog was drained before the last kill"
        # The same process rode out every restart: it forwards the rest and commits the
        # source's end (the feeder has stopped).
        end = records_in(bootstrap, source)
        wait_until(
            lambda: fan.alive() and committed() >= end,
            (end - committed()) / 1000 + 60,
            message=lambda: f"committed {committed()} of {end}; fan-out log:\n{fan.log()}",
        )
        assert fan.terminate() == 143
        assert committed() == end
        assert_each_source_record_once(bootstrap, source, target, 8)


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_broker_sigkills_under_an_exactly_once_fanout(tmp_path: Path) -> None:
    _fanout_broker_kills(tmp_path, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_twenty_broker_sigkills_under_an_exactly_once_fanout(tmp_path: Path) -> None:
    _fanout_broker_kills(tmp_path, kills=20)


# --------------------------------------------------------------------------- no transactions


def test_on_a_cluster_without_transactions_the_fanout_stops_and_says_so(
    no_transactions_broker: str, tmp_path: Path
) -> None:
    source, target, group = _topics()
    _produce_backlog(no_transactions_broker, source, 100)
    job = BacklogFanout(no_transactions_broker, source, group, target, 4, start="earliest",
                        exactly_once=True)  # fmt: skip
    with pytest.raises(TransactionsUnsupported, match="refused a transactional producer"):
        job.run(until_caught_up=True)
    assert not _committed(no_transactions_broker, group, source)  # nothing fell back

    args = ["backlog", "fanout", "--from", source, "--group", group, "--to", target, "-p", "4"]
    cli = ChildProcess(no_transactions_broker, [*args, "--start", "earliest", "--exactly-once"])
    assert_one_line_error(cli.run(60), "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")

    recipe = tmp_path / "fanout.toml"
    recipe.write_text(
        f'[[job]]\nkind = "backlog-fanout"\nfrom = "{source}"\ngroup = "{group}"\n'
        f'to = "{target}"\npartitions = 4\nstart = "earliest"\nexactly_once = true\n'
    )
    worker = ChildProcess(no_transactions_broker, ["worker", "run", str(recipe)]).run(60)
    assert_one_line_error(worker, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")
    assert "job backlog-fanout stopped" in worker.stderr
