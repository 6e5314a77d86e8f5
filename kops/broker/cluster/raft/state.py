"""Roles, configuration and the durable quorum state of a Raft node."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Role(enum.Enum):
    """Kafka's QuorumState states (Voted is Unattached with ``voted_id`` set)."""

    UNATTACHED = "unattached"
    CANDIDATE = "candidate"
    LEADER = "leader"
    FOLLOWER = "follower"
    RESIGNED = "resigned"


@dataclass(frozen=True, slots=True)
class QuorumStateData:
    """What must survive a crash: Kafka's ``quorum-state`` file.

    ``voted_id`` is kept for the whole epoch so a node never votes twice in one
    epoch, even across restarts.
    """

    leader_epoch: int = 0
    leader_id: int | None = None
    voted_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "leader_id": -1 if self.leader_id is None else self.leader_id,
            "leader_epoch": self.leader_epoch,
            "voted_id": -1 if self.voted_id is None else self.voted_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuorumStateData:
        leader = int(data.get("leader_id", -1))
        voted = int(data.get("voted_id", -1))
        return cls(
            leader_epoch=int(data.get("leader_epoch", 0)),
            leader_id=None if leader < 0 else leader,
            voted_id=None if voted < 0 else voted,
        )


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timeouts are in ms. Defaults suit nodes on one host (Kafka's are 2x these)."""

    node_id: int
    voters: frozenset[int]
    election_timeout_ms: int = 500
    fetch_timeout_ms: int = 1000
    # A leader parks an empty Fetch for at most this long (long poll).
    fetch_max_wait_ms: int = 250
    # A request without a response after this (beyond any long poll) is re-sent.
    request_timeout_ms: int = 300
    election_backoff_max_ms: int = 500
    fetch_max_entries: int = 100

    def __post_init__(self) -> None:
        if not self.voters:
            raise ValueError("a quorum needs at least one voter")
        if self.fetch_max_wait_ms >= self.fetch_timeout_ms:
            raise ValueError("fetch_max_wait_ms must be below fetch_timeout_ms")

    @property
    def is_voter(self) -> bool:
        return self.node_id in self.voters

    @property
    def majority(self) -> int:
        return len(self.voters) // 2 + 1
