"""Window replay with exactly_once: every record of the window once in the destination
(read_committed), resumable after SIGKILL, riding out broker SIGKILLs, and a finished
window replays nothing."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from kops import admin
from kops.client import ClientSettings, KopsClientError
from kops.recipes.exactly_once import TransactionalSender, TransactionsUnsupported
from kops.recipes.replay import replay, replay_group
from kops.testing import wait_until
from tests.recipes.broker_kills import kill_at_progress, killable_broker
from tests.recipes.processes import ChildProcess, assert_one_line_error
from tests.recipes.streams import read
from tests.recipes.test_replay import BASE_MS, _produce_batched


def _topics(bootstrap: str, records: int) -> tuple[str, str]:
    """A source of ``records`` (value ``v<i>``, time BASE_MS + i s, partition i % 2) and an
    empty destination, two partitions each."""
    src, dst = f"src-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    admin.create_topic(bootstrap, src, 2)
    admin.create_topic(bootstrap, dst, 2)
    _produce_batched(bootstrap, src, records, partitions=2)
    return src, dst


def assert_window_once(bootstrap: str, dst: str, first: int, last: int) -> None:
    """``dst`` (read_committed) holds records ``first`` to ``last`` of the source, once each."""
    copies = Counter(int(m.value[1:]) for m in read(bootstrap, dst))
    twice = {i: n for i, n in copies.items() if n > 1}
    missing = set(range(first, last + 1)) - set(copies)
    assert not missing, f"{len(missing)} records of the window lost"
    assert not twice, f"{len(twice)} records copied more than once"
    assert set(copies) == set(range(first, last + 1))


def _ends(bootstrap: str, topic: str) -> int:
    return sum(p.end_offset or 0 for p in admin.describe_topic(bootstrap, topic).partitions)


def test_exactly_once_replay_copies_the_window_once_and_a_rerun_nothing(
    kafka_broker: str,
) -> None:
    src, dst = _topics(kafka_broker, 2000)
    window = (BASE_MS + 300_000, BASE_MS + 1_700_000)  # records 300..1699
    report = replay(kafka_broker, src, dst, *window, keep_partition=True, exactly_once=True)
    assert report.ok and report.done and not report.resumed and not report.partial
    assert report.copied == 1400 and report.group == replay_group(src, dst, *window)
    assert_window_once(kafka_broker, dst, 300, 1699)
    # The progress is on the replay's group, with the window in the metadata.
    consumer = Consumer(ClientSettings(kafka_broker).consumer_config(report.group))
    committed = consumer.committed([TopicPartition(src, p) for p in (0, 1)], timeout=10)
    consumer.close()
    assert [tp.offset for tp in committed] == [1000, 1000]  # done: the ends
    meta = json.loads(committed[0].metadata.removeprefix("kops-replay:"))
    assert meta == {"from": window[0], "to": window[1], "into": dst, "end": 1000}

    ends = _ends(kafka_broker, dst)
    again = replay(kafka_broker, src, dst, *window, exactly_once=True)
    assert again.done and again.resumed and again.copied == again.read == 0
    assert _ends(kafka_broker, dst) == ends  # not even an empty transaction

    # Without exactly_once, as before: copied again, no group.
    plain = replay(kafka_broker, src, dst, *window)
    assert plain.copied == 1400 and plain.group is None and "done" not in plain.to_dict()


def test_a_group_holding_another_replay_is_refused(kafka_broker: str) -> None:
    src, dst = _topics(kafka_broker, 100)
    group = f"replay-{uuid.uuid4().hex[:6]}"
    replay(kafka_broker, src, dst, BASE_MS, BASE_MS + 50_000, exactly_once=True, group=group)
    with pytest.raises(KopsClientError, match="holds the progress of another replay"):
        replay(kafka_broker, src, dst, BASE_MS, BASE_MS + 60_000, exactly_once=True, group=group)
    with pytest.raises(KopsClientError, match="exactly_once"):
        replay(kafka_broker, src, dst, BASE_MS, BASE_MS + 60_000, group=group)


def test_aborted_rounds_are_sent_again(kafka_broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = _topics(kafka_broker, 1200)
    commit = TransactionalSender.commit
    aborted: list[int] = []

    def abort_every_other(self: TransactionalSender, offsets: Any) -> bool:
        if len(aborted) < 3 and self.committed % 2 == 0:
            self.abort()  # a real abort: the broker writes the markers
            aborted.append(len(offsets))
            return False
        return commit(self, offsets)

    monkeypatch.setattr(TransactionalSender, "commit", abort_every_other)
    monkeypatch.setattr("kops.recipes.replay.ROUND_RECORDS", 200)
    report = replay(kafka_broker, src, dst, BASE_MS, BASE_MS + 1_200_000, exactly_once=True)
    assert len(aborted) == 3 and report.done and report.copied == 1200
    assert_window_once(kafka_broker, dst, 0, 1199)
    assert _ends(kafka_broker, dst) > 1200  # the aborted copies are in the log, unread


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
@pytest.mark.parametrize("seed", [1, 2])
def test_replay_killed_midway_resumes_and_copies_each_record_once(
    kafka_broker: str, seed: int
) -> None:
    src, dst = _topics(kafka_broker, 3000)
    first, last = 200, 2799
    args = ["replay", src, "--into", dst, "--exactly-once", "--keep-partition"]
    args += ["--from", str(BASE_MS + first * 1000), "--to", str(BASE_MS + (last + 1) * 1000)]
    run = ChildProcess(kafka_broker, [*args, "--rate", "1500"])
    run.start()
    # Killed once the destination grew by a random few records: mid-round or mid-commit.
    want = random.Random(seed).randint(20, 1500)
    wait_until(
        lambda: _ends(kafka_broker, dst) >= want,
        30,
        message=lambda: "the replay to copy; its log:\n" + run.log(),
    )
    run.kill()
    assert _ends(kafka_broker, dst) < 2600, "killed before the end"

    rerun = ChildProcess(kafka_broker, [*args, "--json"]).run()
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["resumed"] and report["done"] and 0 < report["copied"] < 2600
    assert "window done" in rerun.stderr
    assert_window_once(kafka_broker, dst, first, last)

    ends = _ends(kafka_broker, dst)
    third = ChildProcess(kafka_broker, [*args, "--json"]).run()
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["copied"] == 0
    assert "nothing copied now" in third.stderr
    assert _ends(kafka_broker, dst) == ends
    assert_window_once(kafka_broker, dst, first, last)


@pytest.mark.slow
def test_twenty_replay_sigkills_copy_each_record_once(kafka_broker: str) -> None:
    src, dst = _topics(kafka_broker, 6000)
    first, last = 0, 5999
    args = ["replay", src, "--into", dst, "--exactly-once", "--keep-partition"]
    args += ["--from", str(BASE_MS + first * 1000), "--to", str(BASE_MS + (last + 1) * 1000)]
    rng = random.Random(20)
    for kill in range(20):
        # Slow enough that every kill lands before the window is done.
        run = ChildProcess(kafka_broker, [*args, "--rate", "200"])
        run.start()
        want = _ends(kafka_broker, dst) + rng.randint(10, 120)
        wait_until(
            lambda run=run, want=want: _ends(kafka_broker, dst) >= want,  # type: ignore[misc]
            30,
            message=lambda run=run: "the replay to copy; its log:\n" + run.log(),  # type: ignore[misc]
        )
        run.kill()
        assert _ends(kafka_broker, dst) < 5900, f"the window was done by kill {kill}"
    final = ChildProcess(kafka_broker, [*args, "--json"]).run()
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["done"]
    assert_window_once(kafka_broker, dst, first, last)


def _replay_broker_kills(tmp_path: Path, kills: int) -> None:
    """A broker that dies under ``kops replay --exactly-once`` and comes back within
    seconds is an outage the replay waits out, as every Kafka client does (an operator
    should not have to babysit a one-shot copy through a broker restart): the same run
    finishes the window, and a re-run with the same arguments copies nothing."""
    records = 1500 + 1000 * kills  # still copying at the last kill, at --rate 200
    with killable_broker(tmp_path) as broker:
        bootstrap = broker.bootstrap
        src, dst = _topics(bootstrap, records)
        args = ["replay", src, "--into", dst, "--exactly-once", "--keep-partition"]
        args += ["--from", str(BASE_MS), "--to", str(BASE_MS + records * 1000)]
        run = ChildProcess(bootstrap, [*args, "--rate", "200"])
        run.start()
        kill_at_progress(
            broker, kills, lambda: _ends(bootstrap, dst), random.Random(kills), step=(10, 300),
            log=run.log,
        )  # fmt: skip
        assert _ends(bootstrap, dst) < records, "the window was done before the last kill"
        process = run.process
        assert process is not None
        wait_until(
            lambda: process.poll() is not None,
            records / 200 + 60,
            message=lambda: "the replay to finish; its log:\n" + run.log(),
        )
        assert process.returncode == 0, run.log()
        assert "window done" in run.log()
        assert_window_once(bootstrap, dst, 0, records - 1)

        ends = _ends(bootstrap, dst)
        again = ChildProcess(bootstrap, [*args, "--json"]).run()
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["done"] and json.loads(again.stdout)["copied"] == 0
        assert _ends(bootstrap, dst) == ends
        assert_window_once(bootstrap, dst, 0, records - 1)


@pytest.mark.slow  # the delay recipe's kill tests cover the family by default
def test_replay_rides_out_broker_sigkills_copying_each_record_once(tmp_path: Path) -> None:
    _replay_broker_kills(tmp_path, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replay_rides_out_twenty_broker_sigkills(tmp_path: Path) -> None:
    _replay_broker_kills(tmp_path, kills=20)


def test_on_a_cluster_without_transactions_the_replay_says_so(no_transactions_broker: str) -> None:
    src, dst = _topics(no_transactions_broker, 50)
    with pytest.raises(TransactionsUnsupported, match="refused a transactional producer"):
        replay(no_transactions_broker, src, dst, BASE_MS, BASE_MS + 60_000, exactly_once=True)
    assert _ends(no_transactions_broker, dst) == 0
    cli = ChildProcess(
        no_transactions_broker,
        ["replay", src, "--into", dst, "--exactly-once",
         "--from", str(BASE_MS), "--to", str(BASE_MS + 60_000)],
    )  # fmt: skip
    assert_one_line_error(cli.run(60), "TRANSACTIONAL_ID_AUTHORIZATION_FAILED")
