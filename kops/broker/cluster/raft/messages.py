"""Raft RPC messages, mirroring the fields of Kafka's KRaft APIs.

These are plain frozen dataclasses. The driver maps them onto the real wire
schemas (Vote, BeginQuorumEpoch, EndQuorumEpoch, Fetch, FetchSnapshot) later;
field names follow Kafka's so that mapping stays mechanical. The sender's node
id travels beside the message (``RaftNode.handle(src, message, now_ms)``), as
it would in the request header / connection, not inside most bodies.

Offsets follow Kafka: an *end offset* is exclusive (the next offset to be
written), so ``high_watermark`` is the first offset that is not committed and a
``last_offset`` in a Vote is the candidate's log end offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Kafka error codes used by the quorum APIs.
NONE = 0
NOT_LEADER_OR_FOLLOWER = 6
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75
INCONSISTENT_VOTER_SET = 94
SNAPSHOT_NOT_FOUND = 98

NO_LEADER = -1


@dataclass(frozen=True, slots=True, order=True)
class OffsetAndEpoch:
    """An (end) offset with the epoch of the entry just before it.

    Ordering compares the epoch first, as Kafka's ``OffsetAndEpoch`` does for
    the vote's log-freshness check.
    """

    epoch: int
    offset: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``control`` marks a LeaderChange record (no user payload)."""

    offset: int
    epoch: int
    payload: bytes
    control: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State up to (excluding) ``end_offset``; ``epoch`` is that of entry ``end_offset - 1``."""

    end_offset: int
    epoch: int
    state: bytes

    @property
    def snapshot_id(self) -> OffsetAndEpoch:
        return OffsetAndEpoch(self.epoch, self.end_offset)


# --- Vote -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteRequest:
    candidate_epoch: int
    candidate_id: int
    last_offset_epoch: int
    last_offset: int


@dataclass(frozen=True, slots=True)
class VoteResponse:
    error_code: int
    leader_id: int
    leader_epoch: int
    vote_granted: bool


# --- BeginQuorumEpoch ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeginQuorumEpochRequest:
    leader_id: int
    leader_epoch: int


@dataclass(frozen=True, slots=True)
class BeginQuorumEpochResponse:
    error_code: int
    leader_id: int
    leader_epoch: int


# --- EndQuorumEpoch -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndQuorumEpochRequest:
    leader_id: int
    leader_epoch: int
    preferred_successors: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EndQuorumEpochResponse:
    error_code: int
    leader_id: int
    leader_epoch: int


# --- Fetch --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """A follower's (or observer's) pull. ``leader_epoch`` is Kafka's CurrentLeaderEpoch."""

    correlation_id: int
    replica_id: int
    leader_epoch: int
    fetch_offset: int
    last_fetched_epoch: int
    max_wait_ms: int = 0


@dataclass(frozen=True, slots=True)
class FetchResponse:
    correlation_id: int
    error_code: int
    leader_id: int
    leader_epoch: int
    high_watermark: int = -1
    records: tuple[Entry, ...] = ()
    diverging_epoch: OffsetAndEpoch | None = None
    snapshot_id: OffsetAndEpoch | None = None


# --- FetchSnapshot ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchSnapshotRequest:
    """Unchunked for now: the whole snapshot comes back in one response."""

    correlation_id: int
    replica_id: int
    leader_epoch: int
    snapshot_id: OffsetAndEpoch


@dataclass(frozen=True, slots=True)
class FetchSnapshotResponse:
    correlation_id: int
    error_code: int
    leader_id: int
    leader_epoch: int
    snapshot_id: OffsetAndEpoch | None = None
    state: bytes = field(default=b"", repr=False)


Request = (
    VoteRequest
    | BeginQuorumEpochRequest
    | EndQuorumEpochRequest
    | FetchRequest
    | FetchSnapshotRequest
)
Response = (
    VoteResponse
    | BeginQuorumEpochResponse
    | EndQuorumEpochResponse
    | FetchResponse
    | FetchSnapshotResponse
)
Message = Request | Response
