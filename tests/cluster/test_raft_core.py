"""Scenario unit tests for the sans-io Raft core."""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kops.broker.cluster.raft.actions import (
    Action,
    AppendEntries,
    ApplyEntries,
    PersistQuorumState,
    Send,
    TruncateLog,
)
from kops.broker.cluster.raft.core import RaftNode
from kops.broker.cluster.raft.log import MemoryLog
from kops.broker.cluster.raft.messages import (
    EndQuorumEpochRequest,
    Entry,
    FetchRequest,
    FetchResponse,
    OffsetAndEpoch,
    VoteRequest,
    VoteResponse,
)
from kops.broker.cluster.raft.quorum_state import FileQuorumStateStore
from kops.broker.cluster.raft.state import QuorumStateData, RaftConfig, Role


def log_of(*epochs: int) -> MemoryLog:
    return MemoryLog(Entry(i, e, b"x%d" % i) for i, e in enumerate(epochs))


def node(
    i: int, voters: set[int], log: MemoryLog | None = None, qs: QuorumStateData | None = None
) -> RaftNode:
    return RaftNode(
        RaftConfig(i, frozenset(voters)), rng=random.Random(i), log=log, quorum_state=qs
    )


class Bus:
    """Delivers every Send at once and flushes every append at once."""

    def __init__(self, nodes: list[RaftNode]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.now = 0
        self.seen: list[tuple[int, Action]] = []

    def run(self, src: int, actions: list[Action]) -> None:
        q: deque[tuple[int, Action]] = deque((src, a) for a in actions)
        while q:
            i, a = q.popleft()
            self.seen.append((i, a))
            n = self.nodes[i]
            if isinstance(a, Send) and a.dest in self.nodes:
                q.extend((a.dest, b) for b in self.nodes[a.dest].handle(i, a.message, self.now))
            elif isinstance(a, AppendEntries):
                q.extend((i, b) for b in n.log_flushed(n.log.end_offset, self.now))

    def start(self) -> None:
        for n in self.nodes.values():
            self.run(n.id, n.start(self.now))

    def tick(self, now: int) -> None:
        self.now = now
        for n in self.nodes.values():
            self.run(n.id, n.tick(now))


def test_single_voter_is_leader_at_once_and_commits() -> None:
    n = node(1, {1})
    acts = n.start(0)
    assert n.role is Role.LEADER and n.epoch == 1
    assert any(isinstance(a, PersistQuorumState) for a in acts)
    assert [a for a in n.log_flushed(n.log.end_offset, 0) if isinstance(a, ApplyEntries)]
    prop = n.propose(b"hello", 1)
    assert n.high_watermark == prop.offset  # not yet flushed
    applied = [a for a in n.log_flushed(n.log.end_offset, 1) if isinstance(a, ApplyEntries)]
    assert applied[0].entries[-1].payload == b"hello" and n.high_watermark == prop.offset + 1


def test_vote_rejected_for_stale_log_and_granted_for_fresh() -> None:
    n = node(2, {1, 2, 3}, log=log_of(1, 1, 2))
    n.start(0)
    for last_epoch, last_offset, ok in [(1, 9, False), (2, 2, False), (2, 3, True)]:
        n = node(2, {1, 2, 3}, log=log_of(1, 1, 2))
        n.start(0)
        acts = n.handle(1, VoteRequest(5, 1, last_epoch, last_offset), 1)
        resp = next(a.message for a in acts if isinstance(a, Send))
        assert isinstance(resp, VoteResponse) and resp.vote_granted is ok


def test_vote_is_persisted_before_the_response_and_binds_after_restart() -> None:
    n = node(2, {1, 2, 3})
    n.start(0)
    acts = n.handle(1, VoteRequest(1, 1, 0, 0), 1)
    kinds = [type(a) for a in acts]
    persist = max(i for i, a in enumerate(acts) if isinstance(a, PersistQuorumState))
    send = kinds.index(Send)
    assert persist < send
    state = [a for a in acts if isinstance(a, PersistQuorumState)][-1].state
    assert state.voted_id == 1 and state.leader_epoch == 1
    again = node(2, {1, 2, 3}, qs=state)
    again.start(2)
    resp = next(
        a.message for a in again.handle(3, VoteRequest(1, 3, 0, 0), 3) if isinstance(a, Send)
    )
    assert isinstance(resp, VoteResponse) and not resp.vote_granted


def test_three_voters_elect_and_replicate() -> None:
    nodes = [node(i, {1, 2, 3}) for i in (1, 2, 3)]
    bus = Bus(nodes)
    bus.start()
    bus.tick(2000)
    leaders = [n for n in nodes if n.role is Role.LEADER]
    assert len(leaders) == 1
    prop = leaders[0].propose(b"v", 2001)
    bus.run(leaders[0].id, prop.actions)
    assert leaders[0].high_watermark == prop.offset + 1


def test_diverging_epoch_truncates_the_follower() -> None:
    # leader log epochs [1, 1, 3, 3]; follower [1, 1, 2, 2, 2]
    leader = node(1, {1, 2, 3}, log=log_of(1, 1, 3, 3), qs=QuorumStateData(3))
    follower = node(2, {1, 2, 3}, log=log_of(1, 1, 2, 2, 2), qs=QuorumStateData(4, 1, 1))
    leader.start(0)
    leader.tick(1001)  # candidate at epoch 4
    leader.handle(3, VoteResponse(0, -1, 4, True), 1002)
    assert leader.role is Role.LEADER and leader.epoch == 4
    req = next(a.message for a in follower.start(0) if isinstance(a, Send))
    assert isinstance(req, FetchRequest) and (req.fetch_offset, req.last_fetched_epoch) == (5, 2)
    resp = next(a.message for a in leader.handle(2, req, 1003) if isinstance(a, Send))
    assert isinstance(resp, FetchResponse) and resp.diverging_epoch == OffsetAndEpoch(1, 2)
    acts = follower.handle(1, resp, 1004)
    assert TruncateLog(2) in acts and follower.log.end_offset == 2
    req2 = next(a.message for a in acts if isinstance(a, Send))
    assert isinstance(req2, FetchRequest) and (req2.fetch_offset, req2.last_fetched_epoch) == (2, 1)
    resp2 = next(a.message for a in leader.handle(2, req2, 1005) if isinstance(a, Send))
    assert isinstance(resp2, FetchResponse)
    assert [e.epoch for e in resp2.records] == [3, 3, 4]


def test_hw_needs_an_entry_of_the_current_epoch() -> None:
    leader = node(1, {1, 2, 3}, log=log_of(1, 2, 2), qs=QuorumStateData(2))
    leader.start(0)
    leader.tick(1001)
    leader.handle(2, VoteResponse(0, -1, 3, True), 1002)
    leader.log_flushed(leader.log.end_offset, 1002)
    # follower 2 holds the old entries but not the LeaderChange at offset 3
    leader.handle(2, FetchRequest(1, 2, 3, 3, 2, 0), 1003)
    assert leader.high_watermark == 0
    leader.handle(2, FetchRequest(2, 2, 3, 4, 3, 0), 1004)
    assert leader.high_watermark == 4


def test_check_quorum_resigns_a_lonely_leader() -> None:
    n = node(1, {1, 2, 3})
    n.start(0)
    n.tick(1001)
    n.handle(2, VoteResponse(0, -1, 1, True), 1002)
    assert n.role is Role.LEADER
    n.tick(1500)
    assert n.role is Role.LEADER
    acts = n.tick(2003)
    assert n.role is Role.RESIGNED
    assert any(isinstance(a, Send) and isinstance(a.message, EndQuorumEpochRequest) for a in acts)
    n.tick(5000)
    assert n.role is Role.CANDIDATE and n.epoch == 2


def test_end_quorum_epoch_hands_off_without_waiting() -> None:
    nodes = [node(i, {1, 2, 3}) for i in (1, 2, 3)]
    bus = Bus(nodes)
    bus.start()
    bus.tick(2000)
    old = next(n for n in nodes if n.role is Role.LEADER)
    epoch = old.epoch
    bus.run(old.id, old.resign(2001))  # same instant: no timeout may elapse
    new = [n for n in nodes if n.role is Role.LEADER]
    assert len(new) == 1 and new[0] is not old and new[0].epoch == epoch + 1


def test_follower_acknowledges_only_flushed_data() -> None:
    f = node(2, {1, 2, 3}, qs=QuorumStateData(1, 1, 1))
    req = next(a.message for a in f.start(0) if isinstance(a, Send))
    assert isinstance(req, FetchRequest)
    resp = FetchResponse(req.correlation_id, 0, 1, 1, 0, records=(Entry(0, 1, b"a", True),))
    acts = f.handle(1, resp, 1)
    assert not [a for a in acts if isinstance(a, Send)]
    sends = [a.message for a in f.log_flushed(1, 2) if isinstance(a, Send)]
    assert isinstance(sends[0], FetchRequest) and sends[0].fetch_offset == 1


def test_quorum_state_file_round_trip(tmp_path: Path) -> None:
    store = FileQuorumStateStore(tmp_path / "meta")
    assert store.read() is None
    st_ = QuorumStateData(7, 2, 3)
    store.write(st_)
    assert store.read() == st_
    store.write(QuorumStateData(8, None, None))
    assert store.read() == QuorumStateData(8)
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == ["quorum-state"]


@given(st.lists(st.integers(1, 4), max_size=30), st.integers(0, 6), st.integers(0, 30))
def test_end_offset_for_epoch_matches_brute_force(steps: list[int], probe: int, cut: int) -> None:
    epochs: list[int] = []
    e = 1
    for s in steps:
        e += s - 1 if s > 2 else 0
        epochs.append(e)
    log = log_of(*epochs)
    log.truncate(min(cut, len(epochs)))
    kept = epochs[: min(cut, len(epochs))]
    got = log.end_offset_for_epoch(probe)
    smaller = [x for x in kept if x <= probe]
    if not smaller:
        assert got == OffsetAndEpoch(0, 0)
    else:
        best = max(smaller)
        end = next((i for i, x in enumerate(kept) if x > best), len(kept))
        assert got == OffsetAndEpoch(best, end)


@given(st.integers(0, 5), st.integers(0, 8), st.integers(0, 5), st.integers(0, 8))
def test_vote_granted_iff_candidate_log_is_at_least_as_fresh(
    ce: int, co: int, oe: int, oo: int
) -> None:
    epochs = [1] * max(0, oo - 1) + ([oe] if oo else []) if oe else []
    epochs = sorted(max(1, x) for x in epochs)
    n = node(2, {1, 2, 3}, log=log_of(*epochs))
    n.start(0)
    mine = n.log.end_offset_and_epoch()
    resp = next(
        a.message for a in n.handle(1, VoteRequest(10, 1, ce, co), 1) if isinstance(a, Send)
    )
    assert isinstance(resp, VoteResponse)
    assert resp.vote_granted == (OffsetAndEpoch(ce, co) >= mine)


def test_a_new_leader_knows_when_it_last_heard_from_the_old_one() -> None:
    nodes = [node(i, {1, 2, 3}) for i in (1, 2, 3)]
    bus = Bus(nodes)
    bus.start()
    bus.tick(2000)
    old = next(n for n in nodes if n.role is Role.LEADER)
    assert old.leader_contact is None  # it fetched from nobody
    followers = [n for n in nodes if n is not old]
    bus.tick(2400)  # parked fetches answered: the followers hear from the old leader
    contacts = [f.leader_contact for f in followers]
    assert all(c is not None and c[0] == old.id and 2000 <= c[1] <= 2400 for c in contacts)
    last = max(c[1] for c in contacts if c is not None)
    del bus.nodes[old.id]  # it dies: nothing reaches it and it says nothing more
    for t in range(2500, 8000, 50):
        bus.tick(t)
        if any(f.role is Role.LEADER for f in followers):
            break
    new = next(f for f in followers if f.role is Role.LEADER)
    assert new.leader_contact is not None and new.leader_contact[0] == old.id
    assert new.leader_contact[1] <= last
