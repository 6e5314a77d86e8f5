"""One consumer group's state: members, generation, protocol and committed offsets.

This module holds data and the pure decisions on it (state transitions,
protocol selection, leader choice). Timers, futures and persistence live in
the coordinator; nothing here touches the event loop or the disk.

States and their legal predecessors follow Kafka's `ClassicGroupState`:

    Empty --join--> PreparingRebalance --all joined--> CompletingRebalance
    CompletingRebalance --leader SyncGroup--> Stable --join/leave/expiry--> PreparingRebalance
    PreparingRebalance --no members left--> Empty;  any state --delete--> Dead
"""

from __future__ import annotations

import asyncio
import enum
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from kops.broker.purgatory import DelayedOperation


class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_VALID_PREVIOUS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.PREPARING_REBALANCE: frozenset(
        {GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY}
    ),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.STABLE: frozenset({GroupState.COMPLETING_REBALANCE}),
    GroupState.DEAD: frozenset(GroupState),
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class OffsetEntry:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int


@dataclass(slots=True)
class JoinRequest:
    group_id: str
    member_id: str
    instance_id: str | None
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    client_id: str
    client_host: str
    # JoinGroup v4+: a member without an id gets MEMBER_ID_REQUIRED first (KIP-394).
    require_known_member_id: bool


@dataclass(slots=True)
class JoinResult:
    """What a JoinGroup caller receives; `members` is filled only for the leader."""

    error: ErrorCode
    member_id: str = ""
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class SyncResult:
    error: ErrorCode
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(eq=False, slots=True)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    # (name, metadata) in the member's order of preference.
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    # A pending JoinGroup / SyncGroup response; set while the member waits.
    join_future: asyncio.Future[JoinResult] | None = None
    sync_future: asyncio.Future[SyncResult] | None = None
    # True until the member's first JoinGroup completes: it cannot heartbeat
    # yet, so it expires on a long join timeout rather than the session timeout.
    is_new: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def awaiting_join(self) -> bool:
        return self.join_future is not None

    @property
    def awaiting_sync(self) -> bool:
        return self.sync_future is not None

    def metadata(self, protocol: str | None) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        return b""

    def matches(self, protocols: list[tuple[str, bytes]]) -> bool:
        return self.protocols == protocols

    def vote(self, candidates: set[str]) -> str:
        for name, _ in self.protocols:
            if name in candidates:
                return name
        raise ValueError("member supports none of the candidate protocols")

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Group:
    def __init__(self, group_id: str, state: GroupState = GroupState.EMPTY) -> None:
        self.group_id = group_id
        self.state = state
        self.state_timestamp = now_ms()
        self.generation = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader: str | None = None
        # Insertion order matters: the first member to join leads.
        self.members: dict[str, Member] = {}
        # Member ids handed out with MEMBER_ID_REQUIRED that have not rejoined yet.
        self.pending: dict[str, asyncio.TimerHandle] = {}
        self.static_members: dict[str, str] = {}
        self.offsets: dict[tuple[str, int], OffsetEntry] = {}
        # TxnOffsetCommit's offsets by producer id: visible once that producer's
        # transaction commits (its marker reaches the group's offsets partition).
        self.pending_txn_offsets: dict[int, dict[tuple[str, int], OffsetEntry]] = {}
        # Members that got this generation's JoinGroup response but have not synced.
        self.pending_sync: set[str] = set()
        # The join phase's delayed operation (DelayedJoin or InitialDelayedJoin).
        self.rebalance_timer: DelayedOperation | None = None
        self.sync_timer: asyncio.TimerHandle | None = None
        self.initial_delay_active = False
        self.new_member_added = False

    def __repr__(self) -> str:
        return f"Group({self.group_id!r}, {self.state.value}, gen={self.generation}, members={len(self.members)})"

    # ---- state ------------------------------------------------------------
    def is_(self, *states: GroupState) -> bool:
        return self.state in states

    def transition(self, state: GroupState) -> None:
        if self.state not in _VALID_PREVIOUS[state]:
            raise RuntimeError(
                f"group {self.group_id}: illegal transition {self.state.value} -> {state.value}"
            )
        self.state = state
        self.state_timestamp = now_ms()

    def cancel_timers(self) -> None:
        for handle in (self.rebalance_timer, self.sync_timer, *self.pending.values()):
            if handle is not None:
                handle.cancel()
        self.rebalance_timer = self.sync_timer = None
        for member in self.members.values():
            member.cancel_timer()

    # ---- membership -------------------------------------------------------
    def has(self, member_id: str) -> bool:
        return member_id in self.members

    def is_leader(self, member_id: str) -> bool:
        return self.leader == member_id

    def add(self, member: Member) -> None:
        if not self.members:
            self.protocol_type = member.protocol_type
        self.members[member.member_id] = member
        if member.instance_id is not None:
            self.static_members[member.instance_id] = member.member_id
        if self.leader is None:
            self.leader = member.member_id

    def remove(self, member_id: str) -> Member | None:
        member = self.members.pop(member_id, None)
        if member is None:
            return None
        member.cancel_timer()
        self.pending_sync.discard(member_id)
        if (
            member.instance_id is not None
            and self.static_members.get(member.instance_id) == member_id
        ):
            del self.static_members[member.instance_id]
        if self.leader == member_id:
            self.leader = next(iter(self.members), None)
        return member

    def is_static_member_fenced(self, member_id: str, instance_id: str | None) -> bool:
        """A known instance id whose current member id is another one."""
        if instance_id is None:
            return False
        current = self.static_members.get(instance_id)
        return current is not None and current != member_id

    def replace_static_member(self, instance_id: str, old_id: str, new_id: str) -> Member:
        """Give a restarted static member the old one's place (and assignment)."""
        member = self.members[old_id]
        self.members = {(new_id if mid == old_id else mid): m for mid, m in self.members.items()}
        member.member_id = new_id
        self.static_members[instance_id] = new_id
        if self.leader == old_id:
            self.leader = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        return member

    def all_joined(self) -> bool:
        return not self.pending and all(m.awaiting_join for m in self.members.values())

    def elect_joined_leader(self) -> bool:
        """Keep the leader if it rejoined, else pick the first member that did."""
        leader = self.members.get(self.leader or "")
        if leader is not None and leader.awaiting_join:
            return True
        for member in self.members.values():
            if member.awaiting_join:
                self.leader = member.member_id
                return True
        return False

    def max_rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    # ---- protocols --------------------------------------------------------
    def candidate_protocols(self) -> set[str]:
        """Protocol names every member supports."""
        counts = Counter(
            name for m in self.members.values() for name in {n for n, _ in m.protocols}
        )
        return {name for name, count in counts.items() if count == len(self.members)}

    def supports(self, protocol_type: str, protocols: list[tuple[str, bytes]]) -> bool:
        if not self.members:
            return bool(protocol_type) and bool(protocols)
        names = {name for name, _ in protocols}
        return protocol_type == self.protocol_type and bool(names & self.candidate_protocols())

    def select_protocol(self) -> str:
        """The candidate most members list first; ties go to the earliest member's choice."""
        candidates = self.candidate_protocols()
        votes = [m.vote(candidates) for m in self.members.values()]
        counts = Counter(votes)
        best = max(counts.values())
        return next(v for v in votes if counts[v] == best)

    def member_metadata(self) -> list[tuple[str, str | None, bytes]]:
        return [
            (m.member_id, m.instance_id, m.metadata(self.protocol_name))
            for m in self.members.values()
        ]

    def subscribed_topics(self) -> set[str] | None:
        """Topics the members subscribe to, or None if a subscription cannot be read."""
        if self.protocol_type != "consumer":
            return None
        topics: set[str] = set()
        for member in self.members.values():
            name = self.protocol_name or (member.protocols[0][0] if member.protocols else None)
            parsed = parse_subscription_topics(member.metadata(name))
            if parsed is None:
                return None
            topics |= parsed
        return topics


def parse_subscription_topics(data: bytes) -> set[str] | None:
    """Topics of a ConsumerProtocolSubscription (i16 version, [string] topics, ...)."""
    try:
        pos = 2
        (count,) = struct.unpack_from(">i", data, pos)
        pos += 4
        topics = set()
        for _ in range(max(count, 0)):
            (length,) = struct.unpack_from(">h", data, pos)
            pos += 2
            if length < 0 or pos + length > len(data):
                return None
            topics.add(data[pos : pos + length].decode())
            pos += length
        return topics
    except (struct.error, UnicodeDecodeError):
        return None
