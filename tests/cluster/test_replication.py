"""The leader's replica bookkeeping: follower LEOs, the high watermark, ISR changes, acks=all.

The example tests follow Kafka's Partition/Replica rules one at a time; the
seeded loop at the end drives a leader, its followers and a controller that
accepts, refuses or overtakes proposals, with answers that arrive late, twice
or out of order, and checks the invariants after every step. A failing seed
prints ``KOPS_REPLICATION_SEED=N``; set it to re-run that seed alone, traced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from kio.schema.errors import ErrorCode

from kops.broker.cluster.replication import (
    FollowerState,
    IsrProposal,
    LeaderReplicas,
    ReplicationConfig,
)
from tests.cluster.seeded import chunked, reproducible

LAG = 1000
NONE = ErrorCode.none.value
NOT_ENOUGH = ErrorCode.not_enough_replicas.value
AFTER_APPEND = ErrorCode.not_enough_replicas_after_append.value


def leader(
    replicas: Sequence[int] = (1, 2, 3),
    isr: Sequence[int] | None = None,
    *,
    leo: int = 0,
    hw: int | None = None,
    now: int = 0,
    min_isr: int = 1,
    partition_epoch: int = 0,
) -> LeaderReplicas:
    """Broker 1 leads at leader epoch 5."""
    return LeaderReplicas(
        1,
        replicas,
        replicas if isr is None else isr,
        5,
        partition_epoch,
        leo,
        leo if hw is None else hw,
        now,
        ReplicationConfig(replica_lag_time_max_ms=LAG, min_insync_replicas=min_isr),
    )


def state(r: LeaderReplicas, replica_id: int) -> FollowerState:
    return next(f for f in r.followers() if f.replica_id == replica_id)


# ---- the high watermark -------------------------------------------------------------------


def test_the_high_watermark_is_the_lowest_leo_in_the_isr() -> None:
    r = leader(leo=0)
    assert r.on_append(10, 0) is False  # both followers unknown
    assert r.on_follower_fetch(2, 10, 1) is False
    assert r.on_follower_fetch(3, 4, 1) is True
    assert (r.high_watermark, r.log_end_offset) == (4, 10)
    assert r.on_follower_fetch(3, 10, 2) is True and r.high_watermark == 10
    assert r.on_append(12, 3) is False and r.high_watermark == 10


def test_a_follower_outside_the_isr_does_not_hold_the_high_watermark_back() -> None:
    r = leader(isr=(1, 2))
    r.on_append(10, 0)
    assert r.on_follower_fetch(2, 10, 1) is True and r.high_watermark == 10
    assert state(r, 3).log_end_offset == -1


def test_a_lone_leader_advances_on_its_own_append() -> None:
    r = leader(replicas=(1,))
    assert r.on_append(3, 0) is True and r.high_watermark == 3
    assert r.followers() == []
    assert leader(replicas=(1,), leo=5, hw=2).high_watermark == 5  # at once, as makeLeader


def test_a_new_leader_keeps_its_high_watermark_until_the_isr_passes_it() -> None:
    r = leader(leo=10, hw=5, now=100)
    assert r.followers() == [FollowerState(2, -1, -1, 100), FollowerState(3, -1, -1, 100)]
    assert r.on_follower_fetch(2, 3, 101) is False  # below the HW: it does not go back
    assert r.on_follower_fetch(3, 9, 101) is False and r.high_watermark == 5
    assert r.on_follower_fetch(2, 7, 102) is True and r.high_watermark == 7


def test_the_high_watermark_stands_still_under_min_isr() -> None:
    r = leader(replicas=(1, 2, 3), isr=(1, 2), min_isr=3)
    r.on_append(10, 0)
    r.on_follower_fetch(2, 10, 1)
    r.on_follower_fetch(3, 10, 1)
    assert r.high_watermark == 0
    assert r.next_isr_change(2) == IsrProposal((1, 2, 3), 0)
    assert r.high_watermark == 0  # the maximal ISR is big enough; the committed one is not
    assert r.isr_committed((1, 2, 3), 1, 3) is True and r.high_watermark == 10


def test_min_isr_above_the_replication_factor_is_capped_at_it() -> None:
    r = leader(replicas=(1,), min_isr=2)
    assert r.effective_min_isr == 1
    assert r.check_append_acks_all() == NONE
    assert r.on_append(4, 0) is True and r.check_acks_all_done(3) == NONE


def test_an_isr_change_never_lowers_the_high_watermark() -> None:
    r = leader(isr=(1, 2))
    r.on_append(10, 0)
    r.on_follower_fetch(2, 10, 0)
    assert r.high_watermark == 10
    # a committed ISR may name a replica this leader has not heard from (LEO -1)
    assert r.isr_committed((1, 2, 3), 1, 1) is False and r.high_watermark == 10
    r.on_follower_fetch(3, 4, 2)
    assert r.high_watermark == 10
    r.on_append(20, 3)
    r.on_follower_fetch(2, 20, 3)
    assert r.high_watermark == 10  # 3 holds it now
    assert r.isr_committed((1, 2), 2, 4) is True and r.high_watermark == 20


# ---- caught-up tracking -------------------------------------------------------------------


def test_caught_up_time_follows_kafkas_two_clauses() -> None:
    r = leader(leo=10, isr=(1, 2), replicas=(1, 2))
    r.on_follower_fetch(2, 5, 100)  # behind the leader's 10
    assert state(r, 2) == FollowerState(2, 5, 100, 0)
    r.on_append(20, 150)
    # it has all the leader had at its previous fetch: caught up as of that fetch
    r.on_follower_fetch(2, 10, 200)
    assert state(r, 2) == FollowerState(2, 10, 200, 100)
    r.on_follower_fetch(2, 15, 300)  # still short of 20, the leader's LEO at 200
    assert state(r, 2).last_caught_up_ms == 100
    r.on_follower_fetch(2, 20, 400)
    assert state(r, 2).last_caught_up_ms == 400
    r.on_follower_fetch(2, 20, 350)  # a late-stamped fetch does not move it back
    assert state(r, 2).last_caught_up_ms == 400


def test_a_follower_outside_the_isr_starts_with_no_caught_up_time() -> None:
    r = leader(isr=(1, 2), now=500)
    assert state(r, 2).last_caught_up_ms == 500 and state(r, 3).last_caught_up_ms == 0


# ---- shrinking ----------------------------------------------------------------------------


def test_a_follower_behind_for_longer_than_the_lag_time_leaves_the_isr() -> None:
    r = leader(leo=10, partition_epoch=7)
    r.on_follower_fetch(2, 10, 0)
    r.on_follower_fetch(3, 10, 0)
    r.on_append(20, 10)
    r.on_follower_fetch(2, 20, 500)
    assert r.next_deadline_ms() == LAG + 1  # 3 last caught up at 0
    assert r.next_isr_change(LAG) is None
    assert r.next_isr_change(LAG + 1) == IsrProposal((1, 2), 7)
    assert r.pending == IsrProposal((1, 2), 7) and r.maximal_isr == (1, 2, 3)


def test_a_follower_at_the_leaders_leo_stays_however_long_it_is_quiet() -> None:
    r = leader(leo=10)
    r.on_follower_fetch(2, 10, 0)
    r.on_follower_fetch(3, 10, 0)
    assert r.next_deadline_ms() is None
    assert r.next_isr_change(100 * LAG) is None


def test_a_follower_that_never_fetches_from_a_new_leader_leaves_after_one_lag_time() -> None:
    r = leader(leo=10, now=1000)
    r.on_follower_fetch(2, 10, 1500)
    assert r.next_deadline_ms() == 1000 + LAG + 1
    assert r.next_isr_change(1000 + LAG + 1) == IsrProposal((1, 2), 0)


def test_every_lagging_follower_leaves_at_once_but_never_the_leader() -> None:
    r = leader(replicas=(3, 1, 2), leo=10)
    r.on_append(20, 1)
    assert r.next_isr_change(LAG + 1) == IsrProposal((1,), 0)
    assert r.isr_committed((1,), 1, LAG + 1) is True and r.high_watermark == 20
    assert r.next_isr_change(100 * LAG) is None and r.isr == (1,)


# ---- expanding ----------------------------------------------------------------------------


def test_a_follower_joins_once_it_reaches_the_hw_and_the_epoch_start() -> None:
    r = leader(isr=(1, 2), leo=10, hw=6)
    assert r.epoch_start_offset == 10
    r.on_follower_fetch(3, 7, 1)  # past the HW, but short of what this epoch began with
    assert r.next_isr_change(1) is None
    r.on_follower_fetch(3, 10, 2)
    assert r.next_isr_change(2) == IsrProposal((1, 2, 3), 0)


def test_a_follower_below_the_hw_does_not_join() -> None:
    r = leader(isr=(1, 2), leo=10)
    r.on_append(20, 0)
    r.on_follower_fetch(2, 20, 0)
    r.on_follower_fetch(3, 15, 1)  # past the epoch start 10, below the HW 20
    assert r.next_isr_change(1) is None
    r.on_follower_fetch(3, 20, 2)
    assert r.next_isr_change(2) == IsrProposal((1, 2, 3), 0)


def test_an_expand_goes_before_a_due_shrink() -> None:
    r = leader(replicas=(1, 2, 3, 4), isr=(1, 2, 3), leo=10)
    r.on_follower_fetch(2, 10, 0)
    r.on_follower_fetch(4, 10, LAG + 1)  # 3 never fetched: due to leave
    assert r.next_isr_change(LAG + 1) == IsrProposal((1, 2, 3, 4), 0)
    assert r.isr_committed((1, 2, 3, 4), 1, LAG + 1) is False
    assert r.next_isr_change(LAG + 1) == IsrProposal((1, 2, 4), 1)


# ---- one change at a time -----------------------------------------------------------------


def test_a_pending_expand_makes_the_hw_wait_for_the_joiner() -> None:
    r = leader(isr=(2, 1), leo=10)
    r.on_follower_fetch(2, 10, 0)
    r.on_follower_fetch(3, 10, 0)
    assert r.next_isr_change(0) == IsrProposal((1, 2, 3), 0)
    assert r.maximal_isr == (2, 1, 3) and r.isr == (2, 1)
    r.on_append(20, 1)
    assert r.on_follower_fetch(2, 20, 1) is False and r.high_watermark == 10
    assert r.on_follower_fetch(3, 15, 2) is True and r.high_watermark == 15


def test_a_pending_shrink_still_waits_for_the_leavers() -> None:
    r = leader(leo=10)
    r.on_follower_fetch(2, 10, LAG)
    assert r.next_isr_change(LAG + 1) == IsrProposal((1, 2), 0)
    assert r.maximal_isr == (1, 2, 3) and r.high_watermark == 10
    r.on_append(20, LAG + 1)
    assert r.on_follower_fetch(2, 20, LAG + 1) is False and r.high_watermark == 10
    assert r.isr_committed((1, 2), 1, LAG + 2) is True and r.high_watermark == 20


def test_no_second_proposal_while_one_is_pending() -> None:
    r = leader(replicas=(1, 2, 3, 4), isr=(1, 2, 3), leo=10)
    r.on_follower_fetch(4, 10, 0)
    first = r.next_isr_change(0)
    assert first == IsrProposal((1, 2, 3, 4), 0)
    assert r.next_isr_change(10 * LAG) is None  # 2 and 3 are long out of sync
    assert r.next_deadline_ms() is None
    assert r.isr_rejected(first) is False and r.pending is None
    assert r.next_deadline_ms() == LAG + 1
    assert r.next_isr_change(10 * LAG) == IsrProposal((1, 2, 3, 4), 0)  # expand first again


def test_a_refused_expand_stops_the_hw_waiting_for_the_joiner() -> None:
    r = leader(isr=(1, 2), leo=10)
    r.on_follower_fetch(2, 10, 0)
    r.on_follower_fetch(3, 10, 0)
    proposal = r.next_isr_change(0)
    r.on_append(20, 1)
    r.on_follower_fetch(2, 20, 1)
    assert r.isr_rejected(IsrProposal((1, 2, 3), 9)) is False  # not the pending one
    assert r.pending == proposal and r.high_watermark == 10
    assert r.isr_rejected() is True and r.high_watermark == 20 and r.isr == (1, 2)
    assert r.isr_rejected() is False


def test_a_commit_may_differ_from_the_proposal_and_sets_the_next_epoch() -> None:
    r = leader(replicas=(1, 2, 3, 4), isr=(1, 2, 3), leo=10, partition_epoch=3)
    for f in (3, 4):
        r.on_follower_fetch(f, 10, 0)
    assert r.next_isr_change(0) == IsrProposal((1, 2, 3, 4), 3)
    # the controller fenced broker 2 before it got to the expand
    assert r.isr_committed((1, 3), 4, 1) is False
    assert (r.isr, r.partition_epoch, r.pending) == ((1, 3), 4, None)
    assert r.next_isr_change(1) == IsrProposal((1, 3, 4), 4)


def test_a_joiner_keeps_its_caught_up_time() -> None:
    r = leader(isr=(1, 2), leo=10, now=0)
    r.on_follower_fetch(2, 10, 0)
    r.on_follower_fetch(3, 5, 50)
    r.on_follower_fetch(3, 10, 100)  # reached the leader's LEO: caught up at 100
    r.next_isr_change(100)
    r.isr_committed((1, 2, 3), 1, 2000)
    assert state(r, 3) == FollowerState(3, 10, 100, 100)


def test_late_and_duplicate_commits_change_nothing() -> None:
    r = leader(leo=10, partition_epoch=4)
    r.on_follower_fetch(2, 10, LAG)
    proposal = r.next_isr_change(LAG + 1)
    assert r.isr_committed((1, 2, 3), 4, LAG + 1) is False  # what it already knew
    assert r.isr_committed((1,), 2, LAG + 1) is False  # older than what it knows
    assert r.pending == proposal and r.isr == (1, 2, 3)
    with pytest.raises(ValueError, match="partition epoch 4"):
        r.isr_committed((1, 2), 4, LAG + 1)


# ---- acks=all -----------------------------------------------------------------------------


def test_acks_all_is_refused_before_the_append_under_min_isr() -> None:
    r = leader(isr=(1, 2), min_isr=3)
    assert r.check_append_acks_all() == NOT_ENOUGH
    r = leader(isr=(1, 2), min_isr=2)
    assert r.check_append_acks_all() == NONE


def test_a_parked_acks_all_completes_once_the_hw_passes_its_last_offset() -> None:
    r = leader(isr=(1, 2), min_isr=2, leo=5)
    r.on_append(10, 0)  # a batch 5..9
    r.on_follower_fetch(2, 9, 1)
    assert r.check_acks_all_done(9) is None
    r.on_follower_fetch(2, 10, 2)
    assert r.check_acks_all_done(9) == NONE
    assert r.check_acks_all_done(10) is None


def test_acks_all_answers_not_enough_replicas_after_append_once_the_isr_shrank() -> None:
    r = leader(isr=(1, 2), min_isr=2)
    r.on_append(10, 0)
    r.on_follower_fetch(2, 10, 1)
    r.on_append(20, 2)
    r.isr_committed((1,), 1, LAG + 2)  # 2 fell out, e.g. fenced by the controller
    assert r.check_append_acks_all() == NOT_ENOUGH
    assert r.check_acks_all_done(9) == AFTER_APPEND
    assert r.check_acks_all_done(19) is None  # the HW is stuck under min ISR: a timeout


# ---- what the caller must not do ----------------------------------------------------------


def test_invalid_calls_raise() -> None:
    r = leader(leo=10)
    for replica_id, offset in [(4, 0), (1, 0), (2, 11), (2, -1)]:
        with pytest.raises(ValueError):
            r.on_follower_fetch(replica_id, offset, 0)
    with pytest.raises(ValueError):
        r.on_append(9, 0)
    with pytest.raises(ValueError):
        r.isr_committed((2, 3), 1, 0)  # without the leader: a leader change, a new object
    with pytest.raises(ValueError):
        r.isr_committed((1, 5), 1, 0)
    assert r.followers() == [FollowerState(2, -1, -1, 0), FollowerState(3, -1, -1, 0)]
    for args in [((1, 2), (2,)), ((2, 3), (2,)), ((1, 1), (1,))]:
        with pytest.raises(ValueError):
            LeaderReplicas(1, args[0], args[1], 0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        LeaderReplicas(1, (1,), (1,), 0, 0, 5, 6, 0)
    with pytest.raises(ValueError):
        ReplicationConfig(replica_lag_time_max_ms=0)
    with pytest.raises(ValueError):
        ReplicationConfig(min_insync_replicas=0)


# ---- random operation sequences -----------------------------------------------------------

SEEDS = 1000
CHUNK = 100
STEPS = 200


@dataclass(frozen=True)
class Committed:
    isr: tuple[int, ...]
    partition_epoch: int


@dataclass(frozen=True)
class Rejected:
    proposal: IsrProposal


class Run:
    """One seed: a leader, its followers, and a controller whose answers may come late.

    The controller accepts a proposal only at its current partition epoch,
    sometimes refuses one anyway, and sometimes fences a follower on its own.
    Each commit reaches the leader twice (the AlterPartition answer and the
    metadata log) and deliveries are taken in random order.
    """

    def __init__(self, seed: int, *, verbose: bool = False) -> None:
        self.rng = rng = random.Random(seed)
        self.verbose = verbose
        self.trace: list[str] = []
        self.now = rng.randint(0, 10**6)
        replicas = tuple(rng.sample(range(1, 8), rng.randint(1, 4)))
        self.leader = rng.choice(replicas)
        isr = [self.leader, *(x for x in replicas if x != self.leader and rng.random() < 0.6)]
        rng.shuffle(isr)
        leo = rng.randint(0, 20)
        self.hw0 = rng.randint(0, leo)
        self.config = ReplicationConfig(LAG, rng.randint(1, 4))
        self.r = LeaderReplicas(
            self.leader, replicas, isr, 3, 10, leo, self.hw0, self.now, self.config
        )
        self.log(f"replicas {replicas} isr {tuple(isr)} leo {leo} hw {self.hw0} {self.config}")
        self.ctl_isr, self.ctl_epoch = tuple(isr), 10
        self.inbox: list[IsrProposal] = []
        self.deliveries: list[Committed | Rejected] = []
        self.fetched: dict[int, int] = {}
        self.previous_fetch: dict[int, tuple[int, int]] = {}
        self.caught_up = {x: self.now if x in isr else 0 for x in replicas if x != self.leader}
        self.parked: list[int] = []
        self.hw = self.r.high_watermark

    def log(self, line: str) -> None:
        self.trace.append(f"t={self.now} {line}")
        if self.verbose:
            print(self.trace[-1])

    def step(self) -> None:
        op = self.rng.choices(
            ["append", "fetch", "bad_fetch", "advance", "propose", "handle", "fence", "deliver"],
            weights=[12, 30, 1, 10, 10, 6, 1, 8],
        )[0]
        advanced = getattr(self, f"op_{op}")()
        self.check(advanced)

    def op_append(self) -> bool:
        r = self.r
        acks_all = self.rng.random() < 0.5
        if acks_all:
            code = r.check_append_acks_all()
            min_isr = min(self.config.min_insync_replicas, len(r.replicas))
            assert code == (NOT_ENOUGH if len(r.isr) < min_isr else NONE)
            if code != NONE:
                return False
        n = self.rng.choice((0, 1, 1, 3, 10))
        self.log(f"append {n} acks_all={acks_all}")
        if acks_all and n:
            self.parked.append(r.log_end_offset + n - 1)
        return r.on_append(r.log_end_offset + n, self.now)

    def op_fetch(self) -> bool:
        followers = [f.replica_id for f in self.r.followers()]
        if not followers:
            return False
        f = self.rng.choice(followers)
        leo = self.r.log_end_offset
        low = max(self.fetched.get(f, 0), 0)
        offset = self.rng.choice((leo, leo, low, self.rng.randint(low, leo)))
        self.log(f"fetch {f} at {offset} (leader LEO {leo})")
        t, prev_leo = self.previous_fetch.get(f, (-1, -1))
        if offset >= leo:
            self.caught_up[f] = max(self.caught_up[f], self.now)
        elif offset >= prev_leo:
            self.caught_up[f] = max(self.caught_up[f], t)
        self.previous_fetch[f] = (self.now, leo)
        self.fetched[f] = offset
        return self.r.on_follower_fetch(f, offset, self.now)

    def op_bad_fetch(self) -> bool:
        r = self.r
        before = (r.followers(), r.high_watermark)
        replica_id, offset = self.rng.choice(
            [(99, 0), (self.leader, 0), (r.replicas[-1], r.log_end_offset + 1)]
        )
        with pytest.raises(ValueError):
            r.on_follower_fetch(replica_id, offset, self.now)
        assert (r.followers(), r.high_watermark) == before
        return False

    def op_advance(self) -> bool:
        self.now += self.rng.choice((0, 1, 10, LAG // 2, LAG, LAG + 1, 3 * LAG))
        return False

    def op_propose(self) -> bool:
        r = self.r
        pending, deadline = r.pending, r.next_deadline_ms()
        leo = r.log_end_offset
        followers = {f.replica_id: f for f in r.followers()}
        joiners = [
            x
            for x, f in followers.items()
            if x not in r.isr and f.log_end_offset >= max(r.high_watermark, r.epoch_start_offset)
        ]
        lagging = {
            x
            for x in r.isr
            if x != self.leader
            and followers[x].log_end_offset != leo
            and self.now - followers[x].last_caught_up_ms > LAG
        }
        proposal = r.next_isr_change(self.now)
        self.log(f"propose -> {proposal}")
        if pending is not None:
            assert proposal is None and deadline is None
        elif joiners:
            grown = tuple(x for x in r.replicas if x in r.isr or x == joiners[0])
            assert proposal == IsrProposal(grown, r.partition_epoch), (joiners, proposal)
        elif lagging:
            shrunk = tuple(x for x in r.replicas if x in r.isr and x not in lagging)
            assert proposal == IsrProposal(shrunk, r.partition_epoch), (lagging, proposal)
            assert deadline is not None and deadline <= self.now
        else:
            assert proposal is None and (deadline is None or deadline > self.now)
        if proposal is not None:
            assert r.pending == proposal and self.leader in proposal.isr
            self.inbox.append(proposal)
        return False

    def op_handle(self) -> bool:
        """The controller answers the oldest AlterPartition it has."""
        if not self.inbox:
            return False
        p = self.inbox.pop(0)
        if p.partition_epoch != self.ctl_epoch or self.rng.random() < 0.15:
            self.deliveries.append(Rejected(p))
        else:
            self.ctl_isr, self.ctl_epoch = p.isr, self.ctl_epoch + 1
            self.deliveries += [Committed(p.isr, self.ctl_epoch)] * 2
        self.log(f"controller answers {p}: {self.deliveries[-1]}")
        return False

    def op_fence(self) -> bool:
        """The controller takes a follower out of the ISR on its own (a session expiry)."""
        others = [x for x in self.ctl_isr if x != self.leader]
        if others:
            gone = self.rng.choice(others)
            self.ctl_isr = tuple(x for x in self.ctl_isr if x != gone)
            self.ctl_epoch += 1
            self.deliveries.append(Committed(self.ctl_isr, self.ctl_epoch))
            self.log(f"controller fences {gone}: {self.deliveries[-1]}")
        return False

    def op_deliver(self) -> bool:
        if not self.deliveries:
            return False
        d = self.deliveries.pop(self.rng.randrange(len(self.deliveries)))
        self.log(f"deliver {d}")
        if isinstance(d, Rejected):
            return self.r.isr_rejected(d.proposal)
        return self.r.isr_committed(d.isr, d.partition_epoch, self.now)

    def check(self, advanced: bool) -> None:
        r, hw = self.r, self.r.high_watermark
        assert hw >= self.hw and advanced == (hw > self.hw), (self.hw, hw, advanced)
        assert self.hw0 <= hw <= r.log_end_offset
        isr, maximal = r.isr, r.maximal_isr
        assert self.leader in isr and set(isr) <= set(r.replicas) and len(set(isr)) == len(isr)
        if r.pending is None:
            assert maximal == isr
        else:
            assert set(maximal) == set(isr) | set(r.pending.isr)
        followers = {f.replica_id: f for f in r.followers()}
        for x, f in followers.items():
            assert f.log_end_offset == self.fetched.get(x, -1)
            assert f.last_caught_up_ms == self.caught_up[x], (x, f, self.caught_up[x])
        leos = [
            r.log_end_offset,
            *(followers[x].log_end_offset for x in maximal if x != self.leader),
        ]
        if hw > self.hw0:
            assert hw <= min(leos), (hw, leos)
            # what a consumer may read is on every replica the controller could elect
            assert all(x == self.leader or self.fetched.get(x, -1) >= hw for x in self.ctl_isr)
        under = len(isr) < min(self.config.min_insync_replicas, len(r.replicas))
        if under:
            assert hw == self.hw, "the HW moved under min ISR"
        else:
            assert hw >= min(leos), f"HW {hw} did not catch up with the maximal ISR {leos}"
        # a parked request is looked at on some later event, not always the one that
        # moved the HW: by then the ISR may have shrunk under min ISR
        for last in list(self.parked) if self.rng.random() < 0.3 else ():
            code = r.check_acks_all_done(last)
            if code is None:
                assert hw <= last
                continue
            self.parked.remove(last)
            assert hw > last and code == (AFTER_APPEND if under else NONE)
            self.log(f"acks=all up to {last} answered {code}")
        self.hw = hw


def run_seed(seed: int, *, verbose: bool = False) -> Run:
    run = Run(seed, verbose=verbose)
    with reproducible(
        "KOPS_REPLICATION_SEED",
        seed,
        "tests/cluster/test_replication.py -k random_operation",
        lambda: run.trace,
        lines=25,
    ):
        for _ in range(STEPS):
            run.step()
    return run


@pytest.mark.parametrize(
    "seeds",
    chunked("KOPS_REPLICATION_SEED", SEEDS, CHUNK),
    ids=lambda s: str(s[0]),
)
def test_random_operation_sequences_keep_the_replication_invariants(seeds: list[int]) -> None:
    verbose = len(seeds) == 1
    for seed in seeds:
        run_seed(seed, verbose=verbose)
