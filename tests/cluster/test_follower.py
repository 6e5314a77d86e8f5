"""A follower's fetch decisions: Fetch to send, append, truncate (KIP-101/279), back off, stop.

The example tests follow Kafka's AbstractFetcherThread rules one at a time; the
seeded loop at the end runs a follower against a fake cluster whose leaders
change, sometimes onto a replica that lacks the follower's uncommitted tail,
whose answers come late, fail or arrive after the leader moved on, and checks
that every append extends a prefix of the answering leader's log, that no
truncation cuts below what both logs agree on, and that after a quiet period
the follower's log equals the leader's. A failing seed prints
``KOPS_FOLLOWER_SEED=N``; set it to re-run that seed alone, traced.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from kio.schema.errors import ErrorCode

from kops.broker.cluster.follower import (
    Append,
    FetchAnswer,
    FetchFrom,
    FollowerAction,
    FollowerConfig,
    FollowerFetcher,
    SetHighWatermark,
    TruncateFullyAndStartAt,
    TruncateTo,
)
from tests.cluster.seeded import chunked, reproducible

NONE = ErrorCode.none.value
OUT_OF_RANGE = ErrorCode.offset_out_of_range.value
NOT_LEADER = ErrorCode.not_leader_or_follower.value
FENCED = ErrorCode.fenced_leader_epoch.value
UNKNOWN_EPOCH = ErrorCode.unknown_leader_epoch.value
STORAGE = ErrorCode.kafka_storage_error.value
UNKNOWN = ErrorCode.unknown_server_error.value
ME = 9


def runs_of(epochs: list[int], start: int) -> list[tuple[int, int]]:
    """(epoch, start offset) of each run of equal epochs: a leader epoch cache."""
    runs: list[tuple[int, int]] = []
    for i, e in enumerate(epochs):
        if not runs or runs[-1][0] != e:
            runs.append((e, start + i))
    return runs


def kafka_end_offset_for_epoch(
    runs: list[tuple[int, int]], epoch: int, leo: int
) -> tuple[int, int]:
    """LeaderEpochFileCache.endOffsetFor: the largest epoch <= ``epoch`` and where it ends."""
    if not runs:
        return (-1, -1)
    if epoch >= runs[-1][0]:
        return (runs[-1][0], leo)
    higher = next(s for e, s in runs if e > epoch)
    floor = [e for e, _ in runs if e <= epoch]
    # below every known epoch Kafka answers the requested one, ending at the first start
    return (floor[-1] if floor else epoch, higher)


class Log:
    """A replica's log as the tests see it: the epoch of each offset from ``start``."""

    def __init__(self, start: int = 0, epochs: list[int] | None = None) -> None:
        self.start = start
        self.epochs = list(epochs or [])

    @property
    def leo(self) -> int:
        return self.start + len(self.epochs)

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1] if self.epochs else -1

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        return kafka_end_offset_for_epoch(runs_of(self.epochs, self.start), epoch, self.leo)


def fetcher(
    log: Log | None = None,
    *,
    hw: int | None = None,
    leader: int | None = 1,
    epoch: int = 5,
    backoff_ms: int = 1000,
    lookup: Callable[[int], tuple[int, int]] | None = None,
) -> FollowerFetcher:
    log = log or Log()
    return FollowerFetcher(
        FollowerConfig(ME, backoff_ms),
        leader,
        epoch,
        log.leo,
        log.last_epoch,
        log.start,
        log.leo if hw is None else hw,
        lookup or log.end_offset_for_epoch,
    )


def records(end: int, epoch: int, hw: int, log_start: int = 0) -> FetchAnswer:
    return FetchAnswer(NONE, hw, log_start, end, epoch, None)


def empty(hw: int, log_start: int = 0) -> FetchAnswer:
    return FetchAnswer(NONE, hw, log_start, None, None, None)


def diverging(epoch: int, end_offset: int, hw: int = 0) -> FetchAnswer:
    return FetchAnswer(NONE, hw, 0, None, None, (epoch, end_offset))


def error(code: int, hw: int = -1, log_start: int = -1) -> FetchAnswer:
    return FetchAnswer(code, hw, log_start, None, None, None)


def epochs(*runs: tuple[int, int]) -> list[int]:
    """(epoch, count) runs spelled out."""
    return [e for e, n in runs for _ in range(n)]


# ---- fetching and appending ---------------------------------------------------------------


def test_the_first_fetch_is_due_at_once_and_describes_the_log() -> None:
    f = fetcher(Log(0, epochs((1, 4), (3, 6))), hw=2)
    assert (f.state, f.next_deadline_ms()) == ("fetching", 0)
    assert f.poll(0) == [FetchFrom(1, 10, 3, 5)]
    assert (f.state, f.next_deadline_ms()) == ("waiting_answer", None)
    assert f.poll(10**6) == []
    assert fetcher(Log(7)).poll(0) == [FetchFrom(1, 7, -1, 5)]


def test_records_are_appended_then_the_hw_is_the_leaders_bounded_by_the_new_leo() -> None:
    f = fetcher(Log(0, [5] * 10), hw=4)
    f.poll(0)
    assert f.on_answer(records(15, 5, hw=20), 1) == [Append(15), SetHighWatermark(15)]
    assert f.state == "awaiting_log" and f.high_watermark == 15
    assert f.log_updated(15, 5, 0, 2) == [FetchFrom(1, 15, 5, 5)]
    assert f.on_answer(records(18, 5, hw=12), 3) == [Append(18), SetHighWatermark(12)]
    f.log_updated(18, 5, 0, 4)
    # the leader's HW may be behind ours (a new leader learning it): Kafka follows it down
    assert f.on_answer(records(19, 5, hw=11), 5) == [Append(19), SetHighWatermark(11)]


def test_an_empty_answer_updates_the_hw_and_the_next_fetch_goes_at_once() -> None:
    f = fetcher(Log(0, [5] * 10), hw=4)
    f.poll(0)
    assert f.on_answer(empty(hw=8), 1) == [SetHighWatermark(8), FetchFrom(1, 10, 5, 5)]
    assert f.on_answer(empty(hw=8), 2) == [FetchFrom(1, 10, 5, 5)]
    assert f.on_answer(empty(hw=30), 3) == [SetHighWatermark(10), FetchFrom(1, 10, 5, 5)]


def test_no_fetch_while_the_log_action_is_in_flight() -> None:
    f = fetcher(Log(0, [5] * 10))
    f.poll(0)
    f.on_answer(records(12, 5, hw=10), 1)
    assert f.in_flight == Append(12)
    assert f.poll(10**6) == [] and f.next_deadline_ms() is None
    assert f.leader_changed(2, 6, 2) == []  # noted, but the append finishes first
    with pytest.raises(ValueError, match="no fetch"):
        f.on_answer(empty(hw=10), 3)
    assert f.log_updated(12, 5, 0, 4) == [FetchFrom(2, 12, 5, 6)]


# ---- diverging epochs (KIP-279) -----------------------------------------------------------


def test_a_diverging_epoch_truncates_to_the_leaders_end_of_that_epoch() -> None:
    f = fetcher(Log(0, epochs((1, 5), (2, 5))), hw=9)
    f.poll(0)
    # below the local HW too: KIP-101 exists because truncating to the HW lost data
    assert f.on_answer(diverging(2, 7), 1) == [TruncateTo(7), SetHighWatermark(7)]
    assert f.log_updated(7, 2, 0, 2) == [FetchFrom(1, 7, 2, 5)]


def test_a_diverging_epoch_truncates_to_the_followers_end_of_it_when_earlier() -> None:
    f = fetcher(Log(0, epochs((1, 5), (3, 5))), hw=2)
    f.poll(0)
    assert f.on_answer(diverging(1, 8), 1) == [TruncateTo(5)]
    f.log_updated(5, 1, 0, 2)
    assert f.high_watermark == 2


def test_a_diverging_epoch_the_follower_lacks_uses_its_largest_epoch_below() -> None:
    # local epochs 1 then 3; the leader's epoch 2 ended at 8: local epoch 1 ended at 5
    for leader_end, target in [(8, 5), (4, 4)]:
        f = fetcher(Log(0, epochs((1, 5), (3, 5))), hw=0)
        f.poll(0)
        assert f.on_answer(diverging(2, leader_end), 1) == [TruncateTo(target)]


def test_a_diverging_epoch_never_truncates_below_the_log_start() -> None:
    log = Log(6, [3] * 4)
    for lookup in (log.end_offset_for_epoch, lambda _: (-1, -1)):
        f = fetcher(log, hw=6, lookup=lookup)
        f.poll(0)
        assert f.on_answer(diverging(2, 4), 1) == [TruncateTo(6)]
        assert f.log_updated(6, -1, 6, 2) == [FetchFrom(1, 6, -1, 5)]


def test_impossible_diverging_epochs_raise_and_keep_the_fetch_in_flight() -> None:
    f = fetcher(Log(4))  # empty: no last epoch, so the leader cannot have compared
    f.poll(0)
    with pytest.raises(ValueError):
        f.on_answer(diverging(1, 2), 1)
    f = fetcher(Log(0, [2] * 5))
    sent = f.poll(0)[0]
    for answer in [
        diverging(3, 2),  # an epoch above the one fetched
        diverging(2, 5),  # epoch 2 ends where the follower does: nothing diverges
        FetchAnswer(NONE, 0, 0, 7, 2, (2, 3)),  # records too
    ]:
        with pytest.raises(ValueError):
            f.on_answer(answer, 1)
    assert f.in_flight is sent
    bad = fetcher(Log(0, [2] * 5), lookup=lambda e: (e + 1, 0))
    bad.poll(0)
    with pytest.raises(ValueError, match="gave epoch"):
        bad.on_answer(diverging(1, 2), 1)


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [FENCED, NOT_LEADER])
def test_fenced_or_not_leader_stops_until_metadata_brings_a_newer_epoch(code: int) -> None:
    f = fetcher(Log(0, [5] * 3))
    f.poll(0)
    assert f.on_answer(error(code), 1) == []
    assert (f.state, f.next_deadline_ms(), f.poll(10**7)) == ("stopped", None, [])
    assert f.leader_changed(1, 5, 2) == []  # the same epoch again: still stopped
    assert f.leader_changed(1, 4, 2) == []
    assert f.leader_changed(None, 6, 3) == [] and f.state == "stopped"
    assert f.leader_changed(2, 7, 4) == [FetchFrom(2, 3, 5, 7)]


@pytest.mark.parametrize(
    "fail",
    [
        lambda f, now: f.on_answer(error(UNKNOWN_EPOCH), now),
        lambda f, now: f.on_answer(error(STORAGE), now),
        lambda f, now: f.on_answer(error(UNKNOWN), now),
        lambda f, now: f.on_transport_error(now),
    ],
    ids=["unknown_leader_epoch", "storage_error", "unknown_error", "transport"],
)
def test_other_errors_back_off_then_fetch_again_with_the_same_epoch(
    fail: Callable[[FollowerFetcher, int], list[FollowerAction]],
) -> None:
    f = fetcher(Log(0, [5] * 3), backoff_ms=250)
    f.poll(0)
    assert fail(f, 100) == []
    assert (f.state, f.next_deadline_ms()) == ("backoff", 350)
    assert f.poll(349) == []
    assert f.poll(350) == [FetchFrom(1, 3, 5, 5)]
    assert f.state == "waiting_answer"


def test_out_of_range_below_the_leaders_log_start_restarts_there() -> None:
    f = fetcher(Log(0, [5] * 10), hw=8)
    f.poll(0)
    answer = error(OUT_OF_RANGE, hw=40, log_start=30)
    assert f.on_answer(answer, 1) == [TruncateFullyAndStartAt(30), SetHighWatermark(30)]
    with pytest.raises(ValueError, match="should be"):
        f.log_updated(30, -1, 0, 2)
    assert f.log_updated(30, -1, 30, 2) == [FetchFrom(1, 30, -1, 5)]


def test_out_of_range_above_the_leaders_end_truncates_to_it() -> None:
    f = fetcher(Log(0, [5] * 10), hw=8)
    f.poll(0)
    assert f.on_answer(error(OUT_OF_RANGE, 6, 0), 1) == [TruncateTo(6), SetHighWatermark(6)]
    assert f.log_updated(6, 5, 0, 2) == [FetchFrom(1, 6, 5, 5)]
    # the leader ends below our log start: nothing left to keep, restart at its end
    f = fetcher(Log(8, [5] * 2))
    f.poll(0)
    assert f.on_answer(error(OUT_OF_RANGE, 6, 0), 1) == [
        TruncateFullyAndStartAt(6),
        SetHighWatermark(6),
    ]


def test_out_of_range_for_an_offset_the_leader_has_backs_off() -> None:
    f = fetcher(Log(0, [5] * 10))
    f.poll(0)
    assert f.on_answer(error(OUT_OF_RANGE, 12, 2), 1) == [] and f.state == "backoff"
    f.poll(1001)
    with pytest.raises(ValueError):
        f.on_answer(error(OUT_OF_RANGE), 1002)  # the leader's offsets are needed


# ---- leader changes -----------------------------------------------------------------------


def test_a_leader_change_clears_the_backoff_and_abandons_the_fetch_in_flight() -> None:
    f = fetcher(Log(0, [5] * 3))
    f.poll(0)
    f.on_transport_error(0)
    assert f.leader_changed(2, 6, 10) == [FetchFrom(2, 3, 5, 6)]
    f = fetcher(Log(0, [5] * 3))
    old, new = f.poll(0)[0], f.leader_changed(3, 6, 10)[0]
    assert isinstance(old, FetchFrom) and isinstance(new, FetchFrom)
    assert new == FetchFrom(3, 3, 5, 6) and f.in_flight is new
    # the old leader's answer, late: ignored when the caller says what it answers
    assert f.on_answer(records(9, 5, 9), 11, request=old) == []
    assert f.on_transport_error(11, request=old) == []
    assert f.on_answer(records(4, 6, 4), 12, request=new) == [Append(4), SetHighWatermark(4)]


def test_older_and_duplicate_metadata_changes_nothing() -> None:
    f = fetcher(Log(0, [5] * 3))
    sent = f.poll(0)[0]
    assert f.leader_changed(2, 4, 1) == [] and f.leader_changed(1, 5, 1) == []
    assert f.in_flight is sent and (f.leader_id, f.leader_epoch) == (1, 5)
    with pytest.raises(ValueError, match="leader epoch 5"):
        f.leader_changed(2, 5, 1)
    with pytest.raises(ValueError, match="itself"):
        f.leader_changed(ME, 6, 1)


def test_without_a_leader_nothing_is_fetched() -> None:
    f = fetcher(Log(0, [5] * 3), leader=None, epoch=-1)
    assert (f.state, f.poll(0), f.next_deadline_ms()) == ("stopped", [], None)
    assert f.leader_changed(4, 0, 1) == [FetchFrom(4, 3, 5, 0)]
    assert f.leader_changed(None, 1, 2) == [] and f.in_flight is None


# ---- what the caller must not do ----------------------------------------------------------


def test_invalid_calls_raise() -> None:
    for log, hw in [((0, 5, 6), 7), ((3, 5, 2), 3), ((-1, 5, 0), 0), ((0, -2, 0), 0)]:
        with pytest.raises(ValueError):
            FollowerFetcher(FollowerConfig(ME), 1, 5, log[2], log[1], log[0], hw, lambda e: (e, 0))
    with pytest.raises(ValueError):
        fetcher(leader=ME)
    for replica_id, backoff_ms in [(-1, 0), (1, -1)]:
        with pytest.raises(ValueError):
            FollowerConfig(replica_id, backoff_ms)
    f = fetcher(Log(0, [5] * 10))
    with pytest.raises(ValueError, match="no fetch"):
        f.on_answer(empty(10), 0)
    with pytest.raises(ValueError, match="no fetch"):
        f.on_transport_error(0)
    with pytest.raises(ValueError, match="no log action"):
        f.log_updated(10, 5, 0, 0)
    f.poll(0)
    for answer in [records(10, 5, 10), records(9, 5, 9), records(12, 6, 12), empty(-1)]:
        with pytest.raises(ValueError):
            f.on_answer(answer, 0)
    f.on_answer(records(12, 5, 12), 0)
    with pytest.raises(ValueError, match="should be"):
        f.log_updated(11, 5, 0, 0)


# ---- seeded simulation --------------------------------------------------------------------

SEEDS = 500
CHUNK = 100
STEPS = 300
BROKERS = (1, 2, 3)


@dataclass
class Message:
    """A Fetch on the wire and, once the leader has served it, its answer."""

    request: FetchFrom
    answer: FetchAnswer | None = None  # None once served: a transport failure
    served: bool = False
    records: tuple[int, ...] = ()
    leader_log: tuple[int, ...] = ()  # the answering leader's log, all offsets
    leader_start: int = 0


class Run:
    """One seed: a follower, a fake cluster of leaders, a network, metadata that lags.

    Leaders change to a replica whose log is a prefix of some earlier leader's
    log holding every committed record (no unclean election), so the
    follower's uncommitted tail may diverge; a new leader serves only once it
    has learned it leads (UNKNOWN_LEADER_EPOCH before), a former one answers
    NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH. Log actions are performed
    some steps after they are asked for.
    """

    def __init__(self, seed: int, *, verbose: bool = False) -> None:
        self.rng = rng = random.Random(seed)
        self.verbose = verbose
        self.trace: list[str] = []
        self.now = rng.randint(0, 10**6)
        self.quiet = False
        self.log_: list[int] = [0] * rng.randint(0, 12)  # the leader's, from offset 0
        self.start = rng.randint(0, len(self.log_))
        self.hw = rng.randint(self.start, len(self.log_))
        self.epoch, self.active = 0, True
        self.leader: int | None = 1
        self.epoch_start = 0
        self.tenures: list[list[int]] = []
        self.metadata: list[tuple[int | None, int]] = []
        self.delivered: list[tuple[int | None, int]] = [(1, 0)]
        end = rng.randint(0, len(self.log_))
        fstart = rng.randint(0, end)
        self.flog = Log(fstart, self.log_[fstart:end])
        self.fhw = rng.randint(fstart, end)
        self.f = FollowerFetcher(
            FollowerConfig(ME, rng.choice((0, 100, 1000))),
            1,
            0,
            self.flog.leo,
            self.flog.last_epoch,
            fstart,
            self.fhw,
            lambda e: self.flog.end_offset_for_epoch(e),
        )
        for _ in range(rng.randint(0, 3)):
            self.op_append()
            self.op_change()
            self.active = True
        self.net: list[Message] = []
        self.pending: tuple[list[FollowerAction], Message] | None = None
        self.log(f"leader log {self.log_} start {self.start} hw {self.hw}; follower {fstart}")

    def log(self, line: str) -> None:
        self.trace.append(f"t={self.now} {line}")
        if self.verbose:
            print(self.trace[-1])

    # -- the follower's caller

    def handle(self, actions: list[FollowerAction], msg: Message | None) -> None:
        self.log(f"  -> {actions}")
        if any(isinstance(a, Append | TruncateTo | TruncateFullyAndStartAt) for a in actions):
            assert self.pending is None and msg is not None
            assert not any(isinstance(a, FetchFrom) for a in actions)
            self.pending = (actions, msg)
            return
        for a in actions:
            if isinstance(a, SetHighWatermark):
                self.set_hw(a.high_watermark)
            else:
                assert isinstance(a, FetchFrom) and self.pending is None
                assert not any(m.request is self.f.in_flight for m in self.net)
                assert (a.fetch_offset, a.last_fetched_epoch) == (
                    self.flog.leo,
                    self.flog.last_epoch,
                )
                self.net.append(Message(a))

    def set_hw(self, hw: int) -> None:
        assert self.flog.start <= hw <= self.flog.leo, (hw, self.flog.start, self.flog.leo)
        self.fhw = hw

    def op_log(self) -> None:
        if self.pending is None:
            return
        actions, msg = self.pending
        self.pending = None
        flog = self.flog
        for a in actions:
            self.log(f"perform {a}")
            if isinstance(a, Append):
                # log matching: what the follower holds is what the answering leader held
                lo = max(flog.start, msg.leader_start)
                assert flog.epochs[lo - flog.start :] == list(msg.leader_log[lo : flog.leo])
                assert flog.leo + len(msg.records) == a.records_end_offset
                flog.epochs += msg.records
            elif isinstance(a, TruncateTo):
                agreed = max(flog.start, msg.leader_start)
                while (
                    agreed < min(flog.leo, len(msg.leader_log))
                    and flog.epochs[agreed - flog.start] == msg.leader_log[agreed]
                ):
                    agreed += 1
                assert a.end_offset >= agreed, f"cut at {a.end_offset} below agreement {agreed}"
                del flog.epochs[a.end_offset - flog.start :]
            elif isinstance(a, TruncateFullyAndStartAt):
                self.flog = flog = Log(a.offset)
            else:
                assert isinstance(a, SetHighWatermark)
                self.set_hw(a.high_watermark)
        self.handle(self.f.log_updated(flog.leo, flog.last_epoch, flog.start, self.now), None)

    def op_poll(self) -> None:
        deadline = self.f.next_deadline_ms()
        actions = self.f.poll(self.now)
        self.log(f"poll (deadline {deadline})")
        if deadline is None or deadline > self.now:
            assert actions == []
        else:
            assert len(actions) == 1 and isinstance(actions[0], FetchFrom)
        self.handle(actions, None)

    def op_deliver(self) -> None:
        served = [m for m in self.net if m.served]
        if not served:
            return
        msg = self.rng.choice(served)
        self.net.remove(msg)
        live = msg.request is self.f.in_flight
        self.log(f"deliver {msg.answer} for {msg.request} (live {live})")
        if msg.answer is None:
            actions = self.f.on_transport_error(self.now, request=msg.request)
        else:
            actions = self.f.on_answer(msg.answer, self.now, request=msg.request)
        assert live or actions == []
        self.handle(actions, msg)

    def op_metadata(self) -> None:
        if not self.metadata:
            if self.delivered and self.rng.random() < 0.5:
                leader, epoch = self.rng.choice(self.delivered)
                assert self.f.leader_changed(leader, epoch, self.now) == []
            return
        leader, epoch = self.metadata.pop(0)
        self.log(f"metadata: leader {leader} epoch {epoch}")
        self.delivered.append((leader, epoch))
        self.handle(self.f.leader_changed(leader, epoch, self.now), None)

    def op_advance(self) -> None:
        self.now += self.rng.choice((0, 1, 10, 99, 100, 1000, 3000))

    # -- the cluster

    def op_serve(self) -> None:
        waiting = [m for m in self.net if not m.served]
        if waiting:
            self.serve(waiting[0])

    def serve(self, msg: Message) -> None:
        r, rng = msg.request, self.rng
        msg.served = True
        noisy = not self.quiet
        if noisy and rng.random() < 0.05:
            msg.answer = None
        elif r.current_leader_epoch < self.epoch:
            current = r.leader_id == self.leader and self.active
            msg.answer = error(FENCED if current else rng.choice((FENCED, NOT_LEADER)))
        else:
            assert (r.current_leader_epoch, r.leader_id) == (self.epoch, self.leader)
            if not self.active:
                msg.answer = error(UNKNOWN_EPOCH)
            elif noisy and rng.random() < 0.05:
                msg.answer = error(rng.choice((STORAGE, UNKNOWN, UNKNOWN_EPOCH)))
            else:
                self.answer(msg)
        self.log(f"serve {r}: {msg.answer}")

    def leader_runs(self) -> list[tuple[int, int]]:
        """The leader's epoch cache: its log's runs from its start, and its own epoch."""
        runs = runs_of(self.log_[self.start :], self.start)
        if not runs or runs[-1][0] != self.epoch:
            runs.append((self.epoch, max(self.epoch_start, self.start)))
        return runs

    def answer(self, msg: Message) -> None:
        """Kafka's leader: the divergence check first, then the range, then records."""
        r, leo = msg.request, len(self.log_)
        msg.leader_log, msg.leader_start = tuple(self.log_), self.start
        offset, last = r.fetch_offset, r.last_fetched_epoch
        if last >= 0:
            epoch, end = kafka_end_offset_for_epoch(self.leader_runs(), last, leo)
            if epoch < last or end < offset:
                msg.answer = FetchAnswer(NONE, self.hw, self.start, None, None, (epoch, end))
                return
        if not self.start <= offset <= leo:
            msg.answer = error(OUT_OF_RANGE, hw=leo, log_start=self.start)
            return
        self.hw = max(self.hw, offset)  # the follower has everything below its fetch offset
        end = min(leo, offset + self.rng.randint(0 if not self.quiet else 1, 5))
        msg.records = tuple(self.log_[offset:end])
        last_epoch = self.log_[end - 1] if end > offset else None
        msg.answer = FetchAnswer(
            NONE, self.hw, self.start, end if end > offset else None, last_epoch, None
        )

    def op_append(self) -> None:
        if self.active and self.leader is not None:
            self.log_ += [self.epoch] * self.rng.randint(1, 4)

    def op_change(self, *, leader_needed: bool = False) -> None:
        """A new leader epoch; the new leader's log is a prefix holding every committed record."""
        rng = self.rng
        self.tenures.append(list(self.log_))
        self.epoch += 1
        if leader_needed or rng.random() < 0.85:
            candidates = [t for t in self.tenures if t[: self.hw] == self.log_[: self.hw]]
            tenure = rng.choice(candidates)
            self.log_ = tenure[: rng.randint(max(self.hw, self.start), len(tenure))]
            self.leader = rng.choice(BROKERS)
            self.epoch_start = len(self.log_)
        else:
            self.leader = None
        self.active = False
        self.metadata.append((self.leader, self.epoch))
        self.log(f"leader change: {self.leader} epoch {self.epoch} log {self.log_}")

    def op_activate(self) -> None:
        self.active = self.leader is not None

    def op_retention(self) -> None:
        self.start = self.rng.randint(self.start, self.hw)

    # -- the loop

    def step(self) -> None:
        op = self.rng.choices(
            [
                "poll",
                "serve",
                "deliver",
                "log",
                "advance",
                "append",
                "change",
                "activate",
                "metadata",
                "retention",
            ],
            weights=[10, 15, 15, 10, 8, 10, 3, 6, 6, 2],
        )[0]
        getattr(self, f"op_{op}")()
        self.check()

    def check(self) -> None:
        f, flog = self.f, self.flog
        assert f.state == "awaiting_log" if self.pending else f.state != "awaiting_log"
        live = [m for m in self.net if m.request is f.in_flight]
        assert (f.state == "waiting_answer") == bool(live), (f.state, live)
        if self.pending is None:
            assert (f.log_end_offset, f.last_epoch, f.log_start_offset) == (
                flog.leo,
                flog.last_epoch,
                flog.start,
            )
            assert f.high_watermark == self.fhw and flog.start <= self.fhw <= flog.leo
        assert self.start <= self.hw <= len(self.log_)

    def settle(self) -> None:
        """No more faults: metadata arrives, the leader serves, until the follower caught up."""
        self.quiet = True
        self.log("---- quiet")
        if self.leader is None:
            self.op_change(leader_needed=True)
        self.active = True
        while self.metadata:
            self.op_metadata()
        for _ in range(1000):
            if self.pending is not None:
                self.op_log()
            elif any(not m.served for m in self.net):
                self.op_serve()
            elif self.net:
                self.op_deliver()
            elif (deadline := self.f.next_deadline_ms()) is not None:
                self.now = max(self.now, deadline)
                self.op_poll()
            self.check()
            done = (self.flog.leo, self.fhw) == (len(self.log_), self.hw)
            if done and self.f.state == "waiting_answer" and self.hw == len(self.log_):
                break
        flog, lo = self.flog, max(self.flog.start, self.start)
        assert self.f.state == "waiting_answer", self.f.state
        assert flog.leo == len(self.log_), (flog.leo, len(self.log_))
        assert flog.epochs[lo - flog.start :] == self.log_[lo:], "the logs differ"
        assert self.fhw == self.hw == flog.leo


def run_seed(seed: int, *, verbose: bool = False) -> Run:
    run = Run(seed, verbose=verbose)
    with reproducible(
        "KOPS_FOLLOWER_SEED",
        seed,
        "tests/cluster/test_follower.py -k simulation",
        lambda: run.trace,
        lines=30,
    ):
        for _ in range(STEPS):
            run.step()
        run.settle()
    return run


@pytest.mark.parametrize(
    "seeds",
    chunked("KOPS_FOLLOWER_SEED", SEEDS, CHUNK),
    ids=lambda s: str(s[0]),
)
def test_simulation_the_follower_ends_with_the_leaders_log(seeds: list[int]) -> None:
    verbose = len(seeds) == 1
    for seed in seeds:
        run_seed(seed, verbose=verbose)
