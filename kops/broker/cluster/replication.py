"""What a partition leader keeps about its followers: LEOs, the high watermark, the ISR.

Sans-io, after Kafka's ``Partition`` and ``Replica``: the Fetch and Produce
handlers report what happened (an append, a follower's fetch, the controller's
answer to an ISR change) with the time, and ask what to do next (an ISR change
to send, whether a parked acks=all may be answered). Nothing here reads a clock
or a log, so every rule is testable at exact instants.

The caller's side, in order:

- acks=all produce: ``check_append_acks_all`` before appending, ``on_append``
  after; park the request until ``check_acks_all_done`` stops returning None.
- follower fetch: validate the offset (OFFSET_OUT_OF_RANGE first), then
  ``on_follower_fetch`` and ``next_isr_change``.
- a timer at ``next_deadline_ms``, re-read after every call: ``next_isr_change``.
- the AlterPartition answer, or a metadata update for the same leader epoch:
  ``isr_committed`` or ``isr_rejected``, then ``next_isr_change`` again, since
  a change that came due while one was in flight is proposed only now.

Every call that returns True has advanced the high watermark: parked acks=all
requests and fetches waiting on it may complete. A leader change (a new leader
epoch) replaces this object; nothing here survives one, as in Kafka, where a
new leader forgets what it knew of its followers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

__all__ = ["FollowerState", "IsrProposal", "LeaderReplicas", "ReplicationConfig"]

_NONE = ErrorCode.none.value
_NOT_ENOUGH_REPLICAS = ErrorCode.not_enough_replicas.value
_NOT_ENOUGH_REPLICAS_AFTER_APPEND = ErrorCode.not_enough_replicas_after_append.value


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """replica.lag.time.max.ms and min.insync.replicas, with Kafka's defaults."""

    replica_lag_time_max_ms: int = 30000
    min_insync_replicas: int = 1

    def __post_init__(self) -> None:
        if self.replica_lag_time_max_ms <= 0:
            raise ValueError("replica_lag_time_max_ms must be positive")
        if self.min_insync_replicas < 1:
            raise ValueError("min_insync_replicas must be at least 1")


@dataclass(frozen=True, slots=True)
class FollowerState:
    """One follower as the leader last saw it; -1 for what this leader has not seen yet."""

    replica_id: int
    log_end_offset: int
    last_fetch_ms: int
    last_caught_up_ms: int


@dataclass(frozen=True, slots=True)
class IsrProposal:
    """An AlterPartition to send: the whole new ISR, based on ``partition_epoch``.

    The controller refuses it if the partition has changed since (its epoch
    moved on), so a proposal can never undo a change this leader has not seen.
    """

    isr: tuple[int, ...]
    partition_epoch: int


@dataclass(slots=True)
class _Follower:
    log_end_offset: int = -1
    last_fetch_ms: int = -1
    last_caught_up_ms: int = 0
    # The leader's LEO when the previous fetch arrived: a follower that has now
    # reached it was caught up at that fetch's time, even if the leader moved on.
    previous_fetch_ms: int = -1
    previous_fetch_leader_leo: int = -1


class LeaderReplicas:
    """The leader's view of one partition for one leader epoch; decides, never sends."""

    def __init__(
        self,
        leader_id: int,
        replicas: Sequence[int],
        isr: Sequence[int],
        leader_epoch: int,
        partition_epoch: int,
        log_end_offset: int,
        high_watermark: int,
        now_ms: int,
        config: ReplicationConfig = ReplicationConfig(),
    ) -> None:
        """Start a leader epoch: followers unknown, and the ISR given a full lag window.

        Followers in the ISR count as caught up now rather than at some time
        this leader cannot know, so none is dropped before it had a chance to
        fetch from the new leader.
        """
        replicas = tuple(replicas)
        if len(set(replicas)) != len(replicas) or leader_id not in replicas:
            raise ValueError(f"replicas {replicas} must be distinct and include {leader_id}")
        if not 0 <= high_watermark <= log_end_offset:
            raise ValueError(f"high watermark {high_watermark} outside [0, {log_end_offset}]")
        self._leader_id = leader_id
        self._replicas = replicas
        self._isr = self._checked_isr(isr)
        self._leader_epoch = leader_epoch
        self._partition_epoch = partition_epoch
        self._leo = log_end_offset
        self._hw = high_watermark
        self._epoch_start_offset = log_end_offset
        self._config = config
        self._pending: IsrProposal | None = None
        self._followers = {
            r: _Follower(last_caught_up_ms=now_ms if r in self._isr else 0)
            for r in replicas
            if r != leader_id
        }
        self._advance_high_watermark()

    def _checked_isr(self, isr: Sequence[int]) -> tuple[int, ...]:
        isr = tuple(isr)
        if (
            len(set(isr)) != len(isr)
            or self._leader_id not in isr
            or not set(isr) <= set(self._replicas)
        ):
            raise ValueError(
                f"ISR {isr} must be distinct replicas of {self._replicas} "
                f"including the leader {self._leader_id}"
            )
        return isr

    @property
    def leader_id(self) -> int:
        return self._leader_id

    @property
    def replicas(self) -> tuple[int, ...]:
        return self._replicas

    @property
    def leader_epoch(self) -> int:
        return self._leader_epoch

    @property
    def partition_epoch(self) -> int:
        return self._partition_epoch

    @property
    def config(self) -> ReplicationConfig:
        return self._config

    @config.setter
    def config(self, config: ReplicationConfig) -> None:
        """New settings (the topic's min.insync.replicas changed); they rule from the next event."""
        self._config = config

    @property
    def high_watermark(self) -> int:
        return self._hw

    @property
    def log_end_offset(self) -> int:
        return self._leo

    @property
    def epoch_start_offset(self) -> int:
        """The leader's LEO when this epoch began: no follower joins the ISR below it."""
        return self._epoch_start_offset

    @property
    def isr(self) -> tuple[int, ...]:
        return self._isr

    @property
    def maximal_isr(self) -> tuple[int, ...]:
        """The ISR the high watermark waits for (KIP-497): ``isr``, plus a joiner at the end.

        While an expand is in flight the joiner counts already: if the
        controller accepts it, it must not join lacking records below the HW.
        While a shrink is in flight the leavers still count, since the
        controller may refuse it.
        """
        p = self._pending
        if p is not None and len(p.isr) > len(self._isr):
            return (*self._isr, *(r for r in p.isr if r not in self._isr))
        return self._isr

    @property
    def pending(self) -> IsrProposal | None:
        return self._pending

    @property
    def effective_min_isr(self) -> int:
        """min.insync.replicas capped at the replication factor, as Kafka's effectiveMinIsr.

        Without the cap a partition with fewer replicas than min.insync.replicas
        could never advance its high watermark, not even for acks=1 data.
        """
        return min(self._config.min_insync_replicas, len(self._replicas))

    def followers(self) -> list[FollowerState]:
        """Every follower, in the order of ``replicas``."""
        return [
            FollowerState(r, f.log_end_offset, f.last_fetch_ms, f.last_caught_up_ms)
            for r, f in self._followers.items()
        ]

    def on_append(self, log_end_offset: int, now_ms: int) -> bool:
        """The leader's log grew to ``log_end_offset``; True if the HW advanced.

        ``now_ms`` is taken so that every event carries its time, as the
        Kafka method it mirrors does; no rule here needs it yet.
        """
        if log_end_offset < self._leo:
            raise ValueError(f"leader LEO cannot go back from {self._leo} to {log_end_offset}")
        self._leo = log_end_offset
        return self._advance_high_watermark()

    def on_follower_fetch(self, replica_id: int, fetch_offset: int, now_ms: int) -> bool:
        """A follower fetched at ``fetch_offset``, so it has everything below it.

        True if the HW advanced. An offset may go down (a follower that lost
        unflushed data and truncated): the follower's LEO follows it, the HW
        does not, exactly as in Kafka.
        """
        f = self._followers.get(replica_id)
        if f is None:
            raise ValueError(f"{replica_id} is not a follower of replicas {self._replicas}")
        if not 0 <= fetch_offset <= self._leo:
            raise ValueError(f"fetch offset {fetch_offset} outside [0, {self._leo}]")
        if fetch_offset >= self._leo:
            f.last_caught_up_ms = max(f.last_caught_up_ms, now_ms)
        elif fetch_offset >= f.previous_fetch_leader_leo:
            f.last_caught_up_ms = max(f.last_caught_up_ms, f.previous_fetch_ms)
        f.previous_fetch_ms = now_ms
        f.previous_fetch_leader_leo = self._leo
        f.log_end_offset = fetch_offset
        f.last_fetch_ms = now_ms
        return self._advance_high_watermark()

    def _out_of_sync(self, now_ms: int) -> list[int]:
        lag = self._config.replica_lag_time_max_ms
        return [
            r
            for r, f in self._followers.items()
            if r in self._isr
            and f.log_end_offset != self._leo
            and now_ms - f.last_caught_up_ms > lag
        ]

    def _joiner(self) -> int | None:
        """The first follower outside the ISR that has every committed record of this epoch."""
        floor = max(self._hw, self._epoch_start_offset)
        return next(
            (
                r
                for r, f in self._followers.items()
                if r not in self._isr and f.log_end_offset >= floor
            ),
            None,
        )

    def next_isr_change(self, now_ms: int) -> IsrProposal | None:
        """The AlterPartition to send now, if any; it stays pending until answered.

        One change at a time, as Kafka's PendingExpandIsr/PendingShrinkIsr:
        a second proposal would be based on an ISR that may never commit. An
        expand goes first, since it only makes the HW wait for more replicas.
        """
        if self._pending is not None:
            return None
        joiner = self._joiner()
        if joiner is not None:
            members = {*self._isr, joiner}
        elif leaving := self._out_of_sync(now_ms):
            members = set(self._isr) - set(leaving)
        else:
            return None
        isr = tuple(r for r in self._replicas if r in members)
        self._pending = IsrProposal(isr, self._partition_epoch)
        return self._pending

    def isr_committed(self, isr: Sequence[int], partition_epoch: int, now_ms: int) -> bool:
        """The partition's ISR at ``partition_epoch``, from the controller; True if the HW advanced.

        It may be the pending proposal, another one (the controller fenced a
        broker meanwhile), or a change this leader did not ask for. An epoch
        older than the one known is a late duplicate and changes nothing; the
        same epoch must carry the same ISR. Only a newer epoch answers the
        pending proposal, which was based on the known one. Followers keep
        their fetch state across the change, in or out.
        """
        new_isr = self._checked_isr(isr)
        if partition_epoch <= self._partition_epoch:
            if partition_epoch == self._partition_epoch and set(new_isr) != set(self._isr):
                raise ValueError(
                    f"partition epoch {partition_epoch} has ISR {self._isr}, not {new_isr}"
                )
            return False
        self._isr = new_isr
        self._partition_epoch = partition_epoch
        self._pending = None
        return self._advance_high_watermark()

    def isr_rejected(self, proposal: IsrProposal | None = None) -> bool:
        """The controller did not apply the pending change; True if the HW advanced.

        Call it only when the change is known not to have happened (an error
        answer, not a timeout). Given ``proposal``, a rejection of anything but
        the pending one is a late answer to an earlier request and is ignored.
        A refused expand stops the HW waiting for the joiner, so it may advance.
        """
        if self._pending is None or (proposal is not None and proposal != self._pending):
            return False
        self._pending = None
        return self._advance_high_watermark()

    def check_append_acks_all(self) -> int:
        """Before an acks=all append: NOT_ENOUGH_REPLICAS while the ISR is under min ISR."""
        if len(self._isr) < self.effective_min_isr:
            return _NOT_ENOUGH_REPLICAS
        return _NONE

    def check_acks_all_done(self, last_offset: int) -> int | None:
        """A parked acks=all whose batch ends at ``last_offset``: None while below the HW.

        Once the HW has passed it, NONE, or NOT_ENOUGH_REPLICAS_AFTER_APPEND if
        the ISR shrank under min ISR since: the records are written but fewer
        replicas than asked for are keeping up.
        """
        if self._hw <= last_offset:
            return None
        if len(self._isr) < self.effective_min_isr:
            return _NOT_ENOUGH_REPLICAS_AFTER_APPEND
        return _NONE

    def next_deadline_ms(self) -> int | None:
        """The first time at which ``next_isr_change`` would shrink the ISR.

        None if no ISR follower is behind, or while a change is pending (the
        answer is the next event then). Appends and fetches move it.
        """
        if self._pending is not None:
            return None
        lag = self._config.replica_lag_time_max_ms
        return min(
            (
                f.last_caught_up_ms + lag + 1
                for r, f in self._followers.items()
                if r in self._isr and f.log_end_offset != self._leo
            ),
            default=None,
        )

    def _advance_high_watermark(self) -> bool:
        """HW = min LEO over the maximal ISR, never lower, never while under min ISR.

        The floor is where this leader started: a new leader's followers are
        unknown (-1) and must not pull back what its predecessor exposed.
        """
        if len(self._isr) < self.effective_min_isr:
            return False
        followers = [self._followers[r] for r in self.maximal_isr if r != self._leader_id]
        candidate = min([self._leo, *(f.log_end_offset for f in followers)])
        if candidate <= self._hw:
            return False
        self._hw = candidate
        return True
