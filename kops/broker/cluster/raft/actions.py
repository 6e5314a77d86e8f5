"""Actions the Raft core asks its driver to perform, in list order.

Ordering contract (see the package docstring): ``PersistQuorumState``,
``TruncateLog``, ``PersistSnapshot`` and ``InstallSnapshot`` must be durable
before the driver performs any later action of the same list, in particular
before any ``Send``. ``AppendEntries`` may be buffered; the driver reports
durability with ``RaftNode.log_flushed(end_offset)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kops.broker.cluster.raft.messages import Entry, Message, Snapshot
from kops.broker.cluster.raft.state import QuorumStateData, Role


@dataclass(frozen=True, slots=True)
class PersistQuorumState:
    state: QuorumStateData


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Write these entries at the log end; report the flush with ``log_flushed``."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class TruncateLog:
    """Drop every entry at or after ``end_offset`` (durably, before later actions)."""

    end_offset: int


@dataclass(frozen=True, slots=True)
class PersistSnapshot:
    """Store a local snapshot durably; afterwards entries below its end offset may be deleted."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The leader's snapshot: store it, replace the whole log by it and load its state."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Send:
    dest: int
    message: Message


@dataclass(frozen=True, slots=True)
class ApplyEntries:
    """Entries newly committed (below ``high_watermark``), to apply in order."""

    entries: tuple[Entry, ...]
    high_watermark: int


@dataclass(frozen=True, slots=True)
class RoleChanged:
    role: Role
    epoch: int
    leader_id: int | None


Action = (
    PersistQuorumState
    | AppendEntries
    | TruncateLog
    | PersistSnapshot
    | InstallSnapshot
    | Send
    | ApplyEntries
    | RoleChanged
)
