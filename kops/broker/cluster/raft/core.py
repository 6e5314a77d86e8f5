"""The sans-io KRaft state machine: events in, actions out.

No clock, sockets, event loop or randomness of its own: the caller passes
``now_ms`` with every event and a ``random.Random`` at construction. Every
public method returns the list of actions to perform, in order.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from kops.broker.cluster.raft.actions import (
    Action,
    AppendEntries,
    ApplyEntries,
    InstallSnapshot,
    PersistQuorumState,
    PersistSnapshot,
    RoleChanged,
    Send,
    TruncateLog,
)
from kops.broker.cluster.raft.log import MemoryLog
from kops.broker.cluster.raft.messages import (
    FENCED_LEADER_EPOCH,
    INCONSISTENT_VOTER_SET,
    NO_LEADER,
    NONE,
    NOT_LEADER_OR_FOLLOWER,
    SNAPSHOT_NOT_FOUND,
    UNKNOWN_LEADER_EPOCH,
    BeginQuorumEpochRequest,
    BeginQuorumEpochResponse,
    EndQuorumEpochRequest,
    EndQuorumEpochResponse,
    Entry,
    FetchRequest,
    FetchResponse,
    FetchSnapshotRequest,
    FetchSnapshotResponse,
    Message,
    OffsetAndEpoch,
    Snapshot,
    VoteRequest,
    VoteResponse,
)
from kops.broker.cluster.raft.state import QuorumStateData, RaftConfig, Role

NEVER = 2**62


class NotLeaderError(Exception):
    """A proposal reached a node that is not the leader."""

    def __init__(self, leader_id: int | None, epoch: int) -> None:
        super().__init__(f"not the leader (leader={leader_id}, epoch={epoch})")
        self.leader_id = leader_id
        self.epoch = epoch


class RaftSafetyError(Exception):
    """The core was asked to do something only a broken quorum could ask (e.g. drop committed data)."""


@dataclass(slots=True)
class _Replica:
    end_offset: int = 0  # validated fetch offset in this epoch
    last_fetch_ms: int = -NEVER


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the leader knows of one voter (DescribeQuorum's ReplicaState).

    ``last_fetch_ms`` is on the caller's clock, -1 when it never fetched this epoch.
    """

    replica_id: int
    log_end_offset: int
    last_fetch_ms: int


@dataclass(frozen=True, slots=True)
class QuorumDescription:
    leader_id: int
    leader_epoch: int
    high_watermark: int
    voters: tuple[ReplicaState, ...]


@dataclass(frozen=True, slots=True)
class Proposal:
    offset: int
    epoch: int
    actions: list[Action]


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        *,
        rng: random.Random,
        log: MemoryLog | None = None,
        quorum_state: QuorumStateData | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.log = log if log is not None else MemoryLog()
        self._rng = rng
        qs = quorum_state or QuorumStateData()
        self._persisted = qs
        self.epoch = qs.leader_epoch
        self.leader_id: int | None = qs.leader_id
        self.voted_id: int | None = qs.voted_id
        self.role = Role.UNATTACHED
        self.high_watermark = self.log.start_offset
        self._applied = self.log.start_offset
        self._flushed = self.log.end_offset
        self._now = 0
        self._out: list[Action] = []
        self._started = False
        self._corr = rng.getrandbits(48)
        # timers
        self._election_deadline = NEVER
        self._fetch_deadline = NEVER  # follower: leader silent for too long
        self._retry_at = NEVER  # next resend of whatever request this role retries
        # follower
        self._inflight: int | None = None
        self._inflight_sent = 0
        self._want_snapshot: OffsetAndEpoch | None = None
        # candidate
        self._granted: set[int] = set()
        # leader
        self._replicas: dict[int, _Replica] = {}
        self._epoch_start = 0
        self._epoch_started_ms = 0
        self._parked: dict[
            int, tuple[int, FetchRequest, int]
        ] = {}  # replica -> (src, req, deadline)
        self._begin_pending: set[int] = set()
        # (leader, ms) of the last fetch a leader answered: when this node wins the next
        # election, that is how long the former leader has been silent.
        self.leader_contact: tuple[int, int] | None = None

    # --- public events ------------------------------------------------------

    def start(self, now_ms: int) -> list[Action]:
        """First event after construction (fresh or restarted from durable state)."""
        self._now = now_ms
        if self.leader_id == self.id:
            # We led this epoch before the restart; never lead it again.
            self._become(Role.RESIGNED, self.epoch, self.id, self.voted_id)
            self._election_deadline = now_ms + self._random_election_timeout()
        elif self.leader_id is not None:
            self._become_follower(self.epoch, self.leader_id)
        else:
            self._become_unattached(self.epoch)
        if self.config.voters == frozenset({self.id}):
            self._become_candidate()
        self._started = True
        self._check_timers()
        return self._flush()

    def tick(self, now_ms: int) -> list[Action]:
        self._now = max(self._now, now_ms)
        self._check_timers()
        return self._flush()

    def handle(self, src: int, message: Message, now_ms: int) -> list[Action]:
        self._now = max(self._now, now_ms)
        self._dispatch(src, message)
        self._check_timers()
        return self._flush()

    def propose(self, payload: bytes, now_ms: int) -> Proposal:
        """Append one entry as leader. Committed once ``high_watermark`` passes ``offset``."""
        self._now = max(self._now, now_ms)
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.epoch)
        entry = self._leader_append(payload, control=False)
        self._maybe_advance_hw()
        self._check_timers()
        return Proposal(entry.offset, entry.epoch, self._flush())

    def log_flushed(self, end_offset: int, now_ms: int) -> list[Action]:
        """The driver's completion: the log is durable up to ``end_offset``."""
        self._now = max(self._now, now_ms)
        self._flushed = max(self._flushed, min(end_offset, self.log.end_offset))
        if self.role is Role.LEADER:
            self._maybe_advance_hw()
        self._check_timers()
        return self._flush()

    def snapshot(self, end_offset: int, state: bytes, now_ms: int) -> list[Action]:
        """The driver has applied everything below ``end_offset`` into ``state``; drop that prefix."""
        self._now = max(self._now, now_ms)
        if not self.log.start_offset < end_offset <= self._applied:
            raise ValueError(
                f"snapshot end {end_offset} must be in ({self.log.start_offset}, {self._applied}]"
            )
        snap = Snapshot(end_offset, self.log.epoch_at(end_offset), state)
        self._out.append(PersistSnapshot(snap))
        self.log.drop_prefix(snap)
        return self._flush()

    def resign(self, now_ms: int) -> list[Action]:
        """Graceful shutdown of a leader: hand off quickly with EndQuorumEpoch."""
        self._now = max(self._now, now_ms)
        if self.role is Role.LEADER:
            self._resign()
        return self._flush()

    @property
    def leader_ready(self) -> bool:
        """Leader whose epoch's first entry has committed, so every earlier entry is applied.

        Until then a new leader's state machine may lag the log it inherited: a
        controller must not decide from it.
        """
        return self.role is Role.LEADER and self.high_watermark > self._epoch_start

    def describe(self) -> QuorumDescription:
        """The leader's view of the quorum (DescribeQuorum); NotLeaderError elsewhere."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.epoch)
        voters = []
        for v in sorted(self.config.voters):
            if v == self.id:
                voters.append(ReplicaState(v, self.log.end_offset, self._now))
                continue
            r = self._replicas[v]
            last = r.last_fetch_ms if r.last_fetch_ms > self._epoch_started_ms else -1
            voters.append(ReplicaState(v, r.end_offset, last))
        return QuorumDescription(self.id, self.epoch, self.high_watermark, tuple(voters))

    def next_deadline_ms(self) -> int:
        """When the driver should call ``tick`` next at the latest."""
        retry = self._retry_at
        if (
            self.role is Role.FOLLOWER
            and self._inflight is None
            and self._flushed < self.log.end_offset
        ):
            retry = NEVER  # waiting for log_flushed, not for the clock
        d = min(self._election_deadline, self._fetch_deadline, retry)
        if self.role is Role.LEADER:
            d = min(d, self._check_quorum_deadline())
            for _, _, deadline in self._parked.values():
                d = min(d, deadline)
        return d

    # --- transitions --------------------------------------------------------

    def _become(self, role: Role, epoch: int, leader: int | None, voted: int | None) -> None:
        changed = (role, epoch, leader) != (self.role, self.epoch, self.leader_id)
        self.role, self.epoch, self.leader_id, self.voted_id = role, epoch, leader, voted
        self._persist()
        self._election_deadline = self._fetch_deadline = self._retry_at = NEVER
        self._inflight = None
        self._want_snapshot = None
        self._granted = set()
        self._replicas = {}
        self._parked = {}
        self._begin_pending = set()
        if changed or not self._started:
            self._out.append(RoleChanged(role, epoch, leader))

    def _persist(self) -> None:
        qs = QuorumStateData(self.epoch, self.leader_id, self.voted_id)
        if qs != self._persisted:
            self._persisted = qs
            self._out.append(PersistQuorumState(qs))

    def _random_election_timeout(self) -> int:
        t = self.config.election_timeout_ms
        return t + self._rng.randint(0, t)

    def _become_unattached(self, epoch: int) -> None:
        voted = self.voted_id if epoch == self.epoch else None
        self._become(Role.UNATTACHED, epoch, None, voted)
        if self.config.is_voter:
            self._election_deadline = self._now + self._random_election_timeout()
        else:
            self._retry_at = self._now  # observers go looking for the leader

    def _become_follower(self, epoch: int, leader: int) -> None:
        voted = self.voted_id if epoch == self.epoch else None
        self._become(Role.FOLLOWER, epoch, leader, voted)
        self._fetch_deadline = self._now + self.config.fetch_timeout_ms
        self._retry_at = self._now

    def _become_candidate(self) -> None:
        self._become(Role.CANDIDATE, self.epoch + 1, None, self.id)
        self._granted = {self.id}
        self._election_deadline = self._now + self._random_election_timeout()
        if len(self._granted) >= self.config.majority:
            self._become_leader()
            return
        self._send_votes()

    def _send_votes(self) -> None:
        last = self.log.end_offset_and_epoch()
        req = VoteRequest(self.epoch, self.id, last.epoch, last.offset)
        for v in sorted(self.config.voters - self._granted):
            self._out.append(Send(v, req))
        self._retry_at = self._now + self.config.request_timeout_ms

    def _become_leader(self) -> None:
        self._become(Role.LEADER, self.epoch, self.id, self.id)
        self._replicas = {v: _Replica(last_fetch_ms=self._now) for v in self.config.voters}
        self._epoch_start = self.log.end_offset
        self._epoch_started_ms = self._now
        payload = json.dumps({"leader_id": self.id, "voters": sorted(self.config.voters)})
        self._leader_append(payload.encode(), control=True)
        self._begin_pending = set(self.config.voters) - {self.id}
        self._send_begin_epoch()
        self._maybe_advance_hw()

    def _send_begin_epoch(self) -> None:
        for v in sorted(self._begin_pending):
            self._out.append(Send(v, BeginQuorumEpochRequest(self.id, self.epoch)))
        self._retry_at = (
            self._now + self.config.request_timeout_ms if self._begin_pending else NEVER
        )

    def _resign(self) -> None:
        reps = self._replicas
        successors = sorted(
            (v for v in self.config.voters if v != self.id),
            key=lambda v: (-reps[v].end_offset if v in reps else 0, v),
        )
        self._become(Role.RESIGNED, self.epoch, self.id, self.voted_id)
        self._election_deadline = self._now + self._random_election_timeout()
        req = EndQuorumEpochRequest(self.id, self.epoch, tuple(successors))
        for v in successors:
            self._out.append(Send(v, req))

    def _observe_epoch(self, epoch: int, leader: int) -> bool:
        """React to a peer's (epoch, leader). Returns True if our state moved."""
        if epoch > self.epoch:
            if leader not in (NO_LEADER, self.id):
                self._become_follower(epoch, leader)
            else:
                self._become_unattached(epoch)
            return True
        if (
            epoch == self.epoch
            and leader not in (NO_LEADER, self.id)
            and self.role in (Role.UNATTACHED, Role.CANDIDATE)
        ):
            self._become_follower(epoch, leader)
            return True
        return False

    # --- timers -------------------------------------------------------------

    def _check_quorum_deadline(self) -> int:
        if len(self.config.voters) == 1:
            return NEVER
        times = sorted(
            (r.last_fetch_ms for v, r in self._replicas.items() if v != self.id), reverse=True
        )
        # the majority-th most recent fetch, counting ourselves as always fresh
        t = times[self.config.majority - 2]
        return t + self.config.fetch_timeout_ms

    def _check_timers(self) -> None:
        if not self._started:
            return
        now = self._now
        role = self.role
        if role is Role.LEADER:
            if now >= self._check_quorum_deadline():
                self._resign()
                return
            for replica, (src, req, deadline) in list(self._parked.items()):
                if now >= deadline:
                    del self._parked[replica]
                    self._answer_fetch(src, req)
            if now >= self._retry_at:
                self._send_begin_epoch()
            return
        if role is Role.FOLLOWER and now >= self._fetch_deadline:
            if self.config.is_voter:
                self._become_candidate()
            else:
                self._become_unattached(self.epoch)
            return
        if now >= self._election_deadline and self.config.is_voter:
            self._become_candidate()
            return
        if role is Role.CANDIDATE and now >= self._retry_at:
            self._send_votes()
        if role is Role.FOLLOWER:
            if self._inflight is not None and now >= self._retry_at:
                self._inflight = None  # lost request or response: ask again
            self._maybe_send_fetch()
        if role is Role.UNATTACHED and not self.config.is_voter and now >= self._retry_at:
            voter = self._rng.choice(sorted(self.config.voters))
            self._send_fetch(voter)

    # --- follower side --------------------------------------------------------

    def _maybe_send_fetch(self) -> None:
        if self._inflight is not None or self.leader_id is None:
            return
        if self._now < self._retry_at:
            return
        if self._want_snapshot is not None:
            self._corr += 1
            self._inflight = self._corr
            self._out.append(
                Send(
                    self.leader_id,
                    FetchSnapshotRequest(self._corr, self.id, self.epoch, self._want_snapshot),
                )
            )
            self._retry_at = self._now + self.config.request_timeout_ms
            return
        if self._flushed < self.log.end_offset:
            return  # our fetch offset acknowledges the log: it must be durable first
        self._send_fetch(self.leader_id)

    def _send_fetch(self, dest: int) -> None:
        self._corr += 1
        self._inflight = self._corr
        end = self.log.end_offset
        req = FetchRequest(
            correlation_id=self._corr,
            replica_id=self.id,
            leader_epoch=self.epoch,
            fetch_offset=end,
            last_fetched_epoch=self.log.epoch_at(end),
            max_wait_ms=self.config.fetch_max_wait_ms if self.role is Role.FOLLOWER else 0,
        )
        self._out.append(Send(dest, req))
        self._retry_at = self._now + req.max_wait_ms + self.config.request_timeout_ms

    def _on_fetch_response(self, src: int, resp: FetchResponse) -> None:
        if resp.correlation_id != self._inflight:
            return
        self._inflight = None
        if resp.error_code != NONE:
            if not self._observe_epoch(resp.leader_epoch, resp.leader_id):
                self._retry_at = self._now + self.config.request_timeout_ms
            return
        if self.role is Role.UNATTACHED and resp.leader_epoch >= self.epoch:
            self._become_follower(resp.leader_epoch, src)
        if (
            self.role is not Role.FOLLOWER
            or resp.leader_epoch != self.epoch
            or src != self.leader_id
        ):
            return
        self._fetch_deadline = self._now + self.config.fetch_timeout_ms
        self.leader_contact = (src, self._now)
        self._retry_at = self._now
        if resp.diverging_epoch is not None:
            self._truncate_diverging(resp.diverging_epoch)
        elif resp.snapshot_id is not None:
            self._want_snapshot = resp.snapshot_id
        else:
            records = resp.records
            if records and records[0].offset == self.log.end_offset:
                self.log.append(records)
                self._out.append(AppendEntries(tuple(records)))
            self._follower_hw(resp.high_watermark)
        self._maybe_send_fetch()

    def _follower_hw(self, leader_hw: int) -> None:
        hw = min(leader_hw, self.log.end_offset)
        if hw > self.high_watermark:
            self.high_watermark = hw
            self._apply()

    def _truncate_diverging(self, diverging: OffsetAndEpoch) -> None:
        own = self.log.end_offset_for_epoch(diverging.epoch)
        target = min(diverging.offset, own.offset if own else self.log.start_offset)
        if target < self.high_watermark or target < self.log.start_offset:
            raise RaftSafetyError(
                f"node {self.id}: truncation to {target} below high watermark {self.high_watermark}"
            )
        if target < self.log.end_offset:
            self.log.truncate(target)
            self._flushed = min(self._flushed, target)
            self._out.append(TruncateLog(target))

    def _on_fetch_snapshot_response(self, src: int, resp: FetchSnapshotResponse) -> None:
        if resp.correlation_id != self._inflight:
            return
        self._inflight = None
        if resp.error_code != NONE or resp.snapshot_id is None:
            if not self._observe_epoch(resp.leader_epoch, resp.leader_id):
                self._want_snapshot = None  # fetch again to learn the current snapshot id
                self._retry_at = self._now + self.config.request_timeout_ms
            return
        if self.role is not Role.FOLLOWER or resp.leader_epoch != self.epoch:
            return
        self._fetch_deadline = self._now + self.config.fetch_timeout_ms
        self.leader_contact = (src, self._now)
        self._want_snapshot = None
        self._retry_at = self._now
        snap = Snapshot(resp.snapshot_id.offset, resp.snapshot_id.epoch, resp.state)
        if snap.end_offset > self._applied:
            self.log.reset_to_snapshot(snap)
            self._flushed = snap.end_offset
            self._applied = snap.end_offset
            self.high_watermark = max(self.high_watermark, snap.end_offset)
            self._out.append(InstallSnapshot(snap))
        self._maybe_send_fetch()

    # --- leader side --------------------------------------------------------

    def _leader_append(self, payload: bytes, *, control: bool) -> Entry:
        entry = Entry(self.log.end_offset, self.epoch, payload, control)
        self.log.append([entry])
        self._out.append(AppendEntries((entry,)))
        for replica, (src, req, _) in list(self._parked.items()):
            del self._parked[replica]
            self._answer_fetch(src, req)
        return entry

    def _maybe_advance_hw(self) -> bool:
        ends = sorted(
            (self._flushed if v == self.id else self._replicas[v].end_offset)
            for v in self.config.voters
        )
        candidate = ends[len(ends) - self.config.majority]
        # Raft's current-term rule: only an entry of our own epoch commits the prefix.
        if candidate > self.high_watermark and candidate > self._epoch_start:
            self.high_watermark = candidate
            self._apply()
            for replica, (src, req, _) in list(self._parked.items()):
                del self._parked[replica]
                self._answer_fetch(src, req)
            return True
        return False

    def _apply(self) -> None:
        if self.high_watermark > self._applied:
            entries = self.log.read(self._applied, self.high_watermark)
            self._applied = self.high_watermark
            self._out.append(ApplyEntries(tuple(entries), self.high_watermark))

    def _reply_not_leader(self, src: int, req: FetchRequest) -> None:
        if req.leader_epoch < self.epoch:
            code = FENCED_LEADER_EPOCH
        elif req.leader_epoch > self.epoch:
            code = UNKNOWN_LEADER_EPOCH
        else:
            code = NOT_LEADER_OR_FOLLOWER
        leader = NO_LEADER if self.leader_id is None else self.leader_id
        if self.role is Role.RESIGNED:
            leader = NO_LEADER
        self._out.append(Send(src, FetchResponse(req.correlation_id, code, leader, self.epoch)))

    def _on_fetch_request(self, src: int, req: FetchRequest) -> None:
        if self.role is not Role.LEADER or req.leader_epoch != self.epoch:
            self._reply_not_leader(src, req)
            return
        replica = self._replicas.get(req.replica_id)
        if replica is not None:
            replica.last_fetch_ms = self._now
            self._begin_pending.discard(req.replica_id)
        valid, diverging, snapshot_id = self._validate_fetch(req)
        if not valid:
            self._out.append(
                Send(
                    src,
                    FetchResponse(
                        req.correlation_id,
                        NONE,
                        self.id,
                        self.epoch,
                        self.high_watermark,
                        diverging_epoch=diverging,
                        snapshot_id=snapshot_id,
                    ),
                )
            )
            return
        advanced = False
        if replica is not None and req.fetch_offset > replica.end_offset:
            replica.end_offset = req.fetch_offset
            advanced = self._maybe_advance_hw()
        self._parked.pop(req.replica_id, None)
        if req.fetch_offset >= self.log.end_offset and req.max_wait_ms > 0 and not advanced:
            self._parked[req.replica_id] = (src, req, self._now + req.max_wait_ms)
            return
        self._answer_fetch(src, req)

    def _validate_fetch(
        self, req: FetchRequest
    ) -> tuple[bool, OffsetAndEpoch | None, OffsetAndEpoch | None]:
        log = self.log
        snap = log.snapshot
        if req.fetch_offset < log.start_offset or (
            req.fetch_offset == log.start_offset and req.last_fetched_epoch != log.start_epoch
        ):
            return False, None, snap.snapshot_id if snap else None
        known = log.end_offset_for_epoch(req.last_fetched_epoch)
        if known is None:
            return False, None, snap.snapshot_id if snap else None
        if known.epoch == req.last_fetched_epoch and known.offset >= req.fetch_offset:
            return True, None, None
        if known.offset < log.start_offset:
            return False, None, snap.snapshot_id if snap else None
        return False, known, None

    def _answer_fetch(self, src: int, req: FetchRequest) -> None:
        if self.role is not Role.LEADER:
            self._reply_not_leader(src, req)
            return
        records = self.log.read(req.fetch_offset, max_entries=self.config.fetch_max_entries)
        self._out.append(
            Send(
                src,
                FetchResponse(
                    req.correlation_id,
                    NONE,
                    self.id,
                    self.epoch,
                    self.high_watermark,
                    records=tuple(records),
                ),
            )
        )

    def _on_fetch_snapshot_request(self, src: int, req: FetchSnapshotRequest) -> None:
        snap = self.log.snapshot
        ok = self.role is Role.LEADER and req.leader_epoch == self.epoch
        leader = self.leader_id if self.leader_id is not None and ok else NO_LEADER
        if not ok or snap is None or snap.snapshot_id != req.snapshot_id:
            code = NOT_LEADER_OR_FOLLOWER if not ok else SNAPSHOT_NOT_FOUND
            self._out.append(
                Send(src, FetchSnapshotResponse(req.correlation_id, code, leader, self.epoch))
            )
            return
        replica = self._replicas.get(req.replica_id)
        if replica is not None:
            replica.last_fetch_ms = self._now
        self._out.append(
            Send(
                src,
                FetchSnapshotResponse(
                    req.correlation_id, NONE, self.id, self.epoch, snap.snapshot_id, snap.state
                ),
            )
        )

    # --- elections ------------------------------------------------------------

    def _on_vote_request(self, src: int, req: VoteRequest) -> None:
        if not self.config.is_voter or req.candidate_id not in self.config.voters:
            self._out.append(
                Send(src, VoteResponse(INCONSISTENT_VOTER_SET, NO_LEADER, self.epoch, False))
            )
            return
        if req.candidate_epoch > self.epoch:
            # Raft resets the election timer only for a granted vote: a voter already
            # counting down keeps its deadline, so a stale candidate that keeps bumping
            # the epoch cannot hold off the others forever.
            pending = (
                self._election_deadline if self.role in (Role.UNATTACHED, Role.CANDIDATE) else NEVER
            )
            self._become_unattached(req.candidate_epoch)
            self._election_deadline = min(self._election_deadline, pending)
        granted = (
            req.candidate_epoch == self.epoch
            and self.role is Role.UNATTACHED
            and self.voted_id in (None, req.candidate_id)
            and OffsetAndEpoch(req.last_offset_epoch, req.last_offset)
            >= self.log.end_offset_and_epoch()
        )
        if granted:
            self.voted_id = req.candidate_id
            self._persist()  # durable before the response below is sent
            self._election_deadline = self._now + self._random_election_timeout()
        leader = NO_LEADER if self.leader_id is None else self.leader_id
        self._out.append(Send(src, VoteResponse(NONE, leader, self.epoch, granted)))

    def _on_vote_response(self, src: int, resp: VoteResponse) -> None:
        if self._observe_epoch(resp.leader_epoch, resp.leader_id):
            return
        if self.role is not Role.CANDIDATE or resp.leader_epoch != self.epoch:
            return
        if resp.vote_granted:
            self._granted.add(src)
            if len(self._granted) >= self.config.majority:
                self._become_leader()

    def _on_begin_epoch(self, src: int, req: BeginQuorumEpochRequest) -> None:
        if req.leader_epoch > self.epoch or (
            req.leader_epoch == self.epoch and self.role in (Role.UNATTACHED, Role.CANDIDATE)
        ):
            self._become_follower(req.leader_epoch, req.leader_id)
        code = FENCED_LEADER_EPOCH if req.leader_epoch < self.epoch else NONE
        leader = NO_LEADER if self.leader_id is None else self.leader_id
        self._out.append(Send(src, BeginQuorumEpochResponse(code, leader, self.epoch)))

    def _on_begin_epoch_response(self, src: int, resp: BeginQuorumEpochResponse) -> None:
        if self._observe_epoch(resp.leader_epoch, resp.leader_id):
            return
        if self.role is Role.LEADER and resp.leader_epoch == self.epoch:
            self._begin_pending.discard(src)

    def _on_end_epoch(self, src: int, req: EndQuorumEpochRequest) -> None:
        if req.leader_epoch > self.epoch or (
            req.leader_epoch == self.epoch
            and self.leader_id in (None, req.leader_id)
            and self.role in (Role.FOLLOWER, Role.UNATTACHED)
        ):
            self._become_unattached(req.leader_epoch)
            if self.config.is_voter and self.id in req.preferred_successors:
                pos = req.preferred_successors.index(self.id)
                backoff = 0 if pos == 0 else min(50 * 2**pos, self.config.election_backoff_max_ms)
                self._election_deadline = self._now + backoff
        leader = NO_LEADER if self.leader_id is None else self.leader_id
        self._out.append(Send(src, EndQuorumEpochResponse(NONE, leader, self.epoch)))

    def _on_end_epoch_response(self, src: int, resp: EndQuorumEpochResponse) -> None:
        self._observe_epoch(resp.leader_epoch, resp.leader_id)

    # --- plumbing -------------------------------------------------------------

    def _dispatch(self, src: int, m: Message) -> None:
        if isinstance(m, FetchRequest):
            self._on_fetch_request(src, m)
        elif isinstance(m, FetchResponse):
            self._on_fetch_response(src, m)
        elif isinstance(m, VoteRequest):
            self._on_vote_request(src, m)
        elif isinstance(m, VoteResponse):
            self._on_vote_response(src, m)
        elif isinstance(m, BeginQuorumEpochRequest):
            self._on_begin_epoch(src, m)
        elif isinstance(m, BeginQuorumEpochResponse):
            self._on_begin_epoch_response(src, m)
        elif isinstance(m, EndQuorumEpochRequest):
            self._on_end_epoch(src, m)
        elif isinstance(m, EndQuorumEpochResponse):
            self._on_end_epoch_response(src, m)
        elif isinstance(m, FetchSnapshotRequest):
            self._on_fetch_snapshot_request(src, m)
        else:
            self._on_fetch_snapshot_response(src, m)

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out
