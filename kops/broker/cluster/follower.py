"""What a follower replica decides for one partition: the Fetch to send, and what to do with it.

Sans-io, after Kafka's ``AbstractFetcherThread``/``ReplicaFetcherThread`` with
Fetch v12+ (``last_fetched_epoch`` in, ``diverging_epoch`` out) and the
KIP-101/279/320 truncation rules. Nothing here reads a clock, a socket or a log,
so every rule is testable at exact instants. The caller's side:

- send every ``FetchFrom`` any call returns; give its answer to ``on_answer`` (a
  failure to ``on_transport_error``) with the ``FetchFrom`` as ``request``, so
  that the answer to a fetch a leader change abandoned is ignored, not applied.
- perform the actions in order; after ``Append``/``TruncateTo``/
  ``TruncateFullyAndStartAt`` report the log with ``log_updated``.
- a timer at ``next_deadline_ms``, re-read after every call: ``poll``.
- every metadata update for the partition: ``leader_changed``.

One action is in flight at a time, as in Kafka, where a partition is either
fetched or truncated: every fetch then describes the log as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

__all__ = [
    "Append",
    "FetchAnswer",
    "FetchFrom",
    "FollowerAction",
    "FollowerConfig",
    "FollowerFetcher",
    "SetHighWatermark",
    "TruncateFullyAndStartAt",
    "TruncateTo",
]

_NONE = ErrorCode.none.value
_OFFSET_OUT_OF_RANGE = ErrorCode.offset_out_of_range.value
_NOT_LEADER_OR_FOLLOWER = ErrorCode.not_leader_or_follower.value
_FENCED_LEADER_EPOCH = ErrorCode.fenced_leader_epoch.value


@dataclass(frozen=True, slots=True)
class FollowerConfig:
    """The follower's broker id and replica.fetch.backoff.ms, with Kafka's default."""

    replica_id: int
    backoff_ms: int = 1000

    def __post_init__(self) -> None:
        if self.replica_id < 0 or self.backoff_ms < 0:
            raise ValueError(f"negative replica_id or backoff_ms in {self}")


@dataclass(frozen=True, slots=True)
class FetchFrom:
    """Send this Fetch now; ``last_fetched_epoch`` is -1 for an empty log (no divergence check)."""

    leader_id: int
    fetch_offset: int
    last_fetched_epoch: int
    current_leader_epoch: int


@dataclass(frozen=True, slots=True)
class Append:
    """Append the answer's records as they came (leader's offsets, epochs); LEO is then this."""

    records_end_offset: int


@dataclass(frozen=True, slots=True)
class TruncateTo:
    """Remove every record at ``end_offset`` and above; the HW drops with it if above."""

    end_offset: int


@dataclass(frozen=True, slots=True)
class TruncateFullyAndStartAt:
    """Remove every record and start the log empty at ``offset`` (log start = LEO = HW)."""

    offset: int


@dataclass(frozen=True, slots=True)
class SetHighWatermark:
    high_watermark: int


FollowerAction = FetchFrom | Append | TruncateTo | TruncateFullyAndStartAt | SetHighWatermark
_LogAction = Append | TruncateTo | TruncateFullyAndStartAt
_Actions = list[FollowerAction]


@dataclass(frozen=True, slots=True)
class FetchAnswer:
    """One partition's Fetch answer, decoded.

    For OFFSET_OUT_OF_RANGE, Kafka's follower asks ListOffsets; the caller puts
    the leader's end offset (latest, for a replica: its LEO) in
    ``high_watermark`` and its earliest offset in ``log_start_offset``. Other
    errors may carry -1 in both, as Kafka's error answers do.
    """

    error_code: int
    high_watermark: int
    log_start_offset: int
    records_end_offset: int | None  # None: no records; else last offset + 1
    records_last_epoch: int | None
    diverging_epoch: tuple[int, int] | None  # (epoch, end_offset)


class FollowerFetcher:
    """One partition's fetch state on a follower; decides, never sends nor writes."""

    def __init__(
        self,
        config: FollowerConfig,
        leader_id: int | None,
        leader_epoch: int,
        log_end_offset: int,
        last_epoch: int,
        log_start_offset: int,
        high_watermark: int,
        end_offset_for_epoch: Callable[[int], tuple[int, int]],
    ) -> None:
        """Start from the local log; the first fetch is due at once (``poll``).

        ``end_offset_for_epoch(E)`` answers as OffsetForLeaderEpoch on the local
        log: the largest local epoch <= E and the start of the next local epoch
        (the LEO for the latest), or (-1, -1) when there is none.
        """
        self._config = config
        self._check_leader(leader_id)
        self._check_log(log_end_offset, last_epoch, log_start_offset)
        if not log_start_offset <= high_watermark <= log_end_offset:
            raise ValueError(f"high watermark {high_watermark} outside the log")
        self._leader_id = leader_id
        self._leader_epoch = leader_epoch
        self._leo = log_end_offset
        self._last_epoch = last_epoch
        self._log_start = log_start_offset
        self._hw = high_watermark
        self._end_offset_for_epoch = end_offset_for_epoch
        self._in_flight: FetchFrom | None = None
        self._log_action: _LogAction | None = None
        self._stopped = False
        self._backoff_until: int | None = None

    def _check_leader(self, leader_id: int | None) -> None:
        if leader_id == self._config.replica_id:
            raise ValueError(f"replica {leader_id} leads: a leader does not fetch from itself")

    @staticmethod
    def _check_log(leo: int, last_epoch: int, log_start: int) -> None:
        if not 0 <= log_start <= leo or last_epoch < -1:
            raise ValueError(f"log [{log_start}, {leo}) with last epoch {last_epoch}")

    @property
    def state(self) -> str:
        """fetching (a Fetch is due), waiting_answer, awaiting_log, backoff or stopped."""
        if self._log_action is not None:
            return "awaiting_log"
        if self._in_flight is not None:
            return "waiting_answer"
        if self._leader_id is None or self._stopped:
            return "stopped"
        if self._backoff_until is not None:
            return "backoff"
        return "fetching"

    @property
    def leader_id(self) -> int | None:
        return self._leader_id

    @property
    def leader_epoch(self) -> int:
        return self._leader_epoch

    @property
    def log_end_offset(self) -> int:
        return self._leo

    @property
    def last_epoch(self) -> int:
        return self._last_epoch

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def high_watermark(self) -> int:
        return self._hw

    @property
    def in_flight(self) -> FetchFrom | _LogAction | None:
        """The Fetch awaiting its answer, or the log action awaiting ``log_updated``."""
        return self._in_flight if self._log_action is None else self._log_action

    def next_deadline_ms(self) -> int | None:
        """When ``poll`` has a Fetch to send: the backoff's end, 0 if due now, else None."""
        state = self.state
        if state == "backoff":
            return self._backoff_until
        return 0 if state == "fetching" else None

    def poll(self, now_ms: int) -> _Actions:
        """The Fetch to send if one is due (the first one, or once a backoff has ended)."""
        if self._backoff_until is not None and now_ms >= self._backoff_until:
            self._backoff_until = None
        return self._fetch_if_due()

    def _fetch_if_due(self) -> _Actions:
        if self.state != "fetching":
            return []
        assert self._leader_id is not None
        sent = FetchFrom(self._leader_id, self._leo, self._last_epoch, self._leader_epoch)
        self._in_flight = sent
        return [sent]

    def _answered(self, request: FetchFrom | None) -> FetchFrom | None:
        """The Fetch this answers; None for a stale one (abandoned on a leader change)."""
        if request is not None and request is not self._in_flight:
            return None
        if self._in_flight is None:
            raise ValueError("an answer while no fetch is in flight")
        return self._in_flight

    def _back_off(self, now_ms: int) -> _Actions:
        self._in_flight = None
        self._backoff_until = now_ms + self._config.backoff_ms
        return []

    def on_transport_error(self, now_ms: int, request: FetchFrom | None = None) -> _Actions:
        """The Fetch got no answer (connection lost, timeout): back off, then fetch again."""
        if self._answered(request) is None:
            return []
        return self._back_off(now_ms)

    def on_answer(
        self, answer: FetchAnswer, now_ms: int, request: FetchFrom | None = None
    ) -> _Actions:
        """Apply the leader's answer to the Fetch in flight; see the module for the caller's part.

        Everything is checked before anything changes, so a ValueError (a
        leader's answer that cannot be) leaves the fetch in flight: the caller
        may treat it as a transport error.
        """
        sent = self._answered(request)
        if sent is None:
            return []
        code = answer.error_code
        if code == _NONE and answer.diverging_epoch is not None:
            target = self._divergence_target(sent, answer)
            return self._start_log_action(TruncateTo(target), min(self._hw, target))
        if code == _NONE:
            return self._records(sent, answer)
        if code == _OFFSET_OUT_OF_RANGE:
            return self._out_of_range(sent, answer, now_ms)
        if code in (_FENCED_LEADER_EPOCH, _NOT_LEADER_OR_FOLLOWER):
            # a newer leader epoch exists or this broker no longer leads: only
            # metadata can say whom to fetch from now
            self._in_flight = None
            self._stopped = True
            return []
        # UNKNOWN_LEADER_EPOCH (the leader has not seen our epoch yet) and the rest
        return self._back_off(now_ms)

    def _records(self, sent: FetchFrom, answer: FetchAnswer) -> _Actions:
        """Records (or none) from fetch_offset: append, then HW = min(leader's HW, new LEO)."""
        end, epoch = answer.records_end_offset, answer.records_last_epoch
        if answer.high_watermark < 0:
            raise ValueError(f"high watermark {answer.high_watermark} in a NONE answer")
        if end is None:
            hw = self._bounded_hw(answer.high_watermark, self._leo)
            actions = self._set_hw(hw)
            self._in_flight = None
            return actions + self._fetch_if_due()
        if end <= sent.fetch_offset or epoch is None:
            raise ValueError(f"records ending at {end} (epoch {epoch}) from {sent}")
        if not max(sent.last_fetched_epoch, 0) <= epoch <= sent.current_leader_epoch:
            raise ValueError(f"records of epoch {epoch} answering {sent}")
        return self._start_log_action(Append(end), self._bounded_hw(answer.high_watermark, end))

    def _bounded_hw(self, leader_hw: int, log_end_offset: int) -> int:
        """Kafka's follower HW: the leader's, bounded by the local log start and LEO."""
        return max(self._log_start, min(leader_hw, log_end_offset))

    def _divergence_target(self, sent: FetchFrom, answer: FetchAnswer) -> int:
        """KIP-279: min(leader's end of epoch E, own end of E), never below log start."""
        assert answer.diverging_epoch is not None
        epoch, end_offset = answer.diverging_epoch
        if (
            answer.records_end_offset is not None
            or sent.last_fetched_epoch < 0
            or not 0 <= epoch <= sent.last_fetched_epoch
            or end_offset < 0
        ):
            raise ValueError(f"diverging epoch {answer.diverging_epoch} answering {sent}")
        local_epoch, local_end = self._end_offset_for_epoch(epoch)
        if local_epoch > epoch:
            raise ValueError(f"end_offset_for_epoch({epoch}) gave epoch {local_epoch}")
        # a local epoch below E ends where the next local epoch starts: nothing past
        # it can match the leader's epoch E either, so the same min applies
        own_end = local_end if local_epoch >= 0 else self._log_start
        target = max(self._log_start, min(end_offset, own_end))
        if target >= self._leo:
            raise ValueError(f"diverging epoch {answer.diverging_epoch} leaves LEO {self._leo}")
        return target

    def _out_of_range(self, sent: FetchFrom, answer: FetchAnswer, now_ms: int) -> _Actions:
        """The leader lacks fetch_offset: below its log start restart there, above its end cut.

        A cut below the local log start empties the log, so it restarts at the
        leader's end, as Kafka's truncateTo does below the first segment.
        """
        start, end = answer.log_start_offset, answer.high_watermark
        if not 0 <= start <= end:
            raise ValueError(f"leader log [{start}, {end}) answering OFFSET_OUT_OF_RANGE")
        offset = sent.fetch_offset
        if offset < start:
            return self._start_log_action(TruncateFullyAndStartAt(start), start)
        if offset > end and end >= self._log_start:
            return self._start_log_action(TruncateTo(end), min(self._hw, end))
        if offset > end:
            return self._start_log_action(TruncateFullyAndStartAt(end), end)
        # in range after all (the leader's log moved between the two answers)
        return self._back_off(now_ms)

    def _set_hw(self, hw: int) -> _Actions:
        if hw == self._hw:
            return []
        self._hw = hw
        return [SetHighWatermark(hw)]

    def _start_log_action(self, action: _LogAction, hw: int) -> _Actions:
        self._in_flight = None
        self._log_action = action
        return [action, *self._set_hw(hw)]

    def log_updated(
        self, log_end_offset: int, last_epoch: int, log_start_offset: int, now_ms: int
    ) -> _Actions:
        """The caller performed the log action: the log as it is now, and the next Fetch."""
        action = self._log_action
        if action is None:
            raise ValueError("a log update while no log action is in flight")
        self._check_log(log_end_offset, last_epoch, log_start_offset)
        if isinstance(action, Append):
            expected = (action.records_end_offset, self._log_start)
        elif isinstance(action, TruncateTo):
            expected = (action.end_offset, self._log_start)
        else:
            expected = (action.offset, action.offset)
        if (log_end_offset, log_start_offset) != expected:
            raise ValueError(f"after {action} the log should be [{expected[1]}, {expected[0]})")
        self._log_action = None
        self._leo, self._last_epoch, self._log_start = log_end_offset, last_epoch, log_start_offset
        return self._fetch_if_due()

    def leader_changed(self, leader_id: int | None, leader_epoch: int, now_ms: int) -> _Actions:
        """Metadata names a leader (or none) for ``leader_epoch``: fetch from it at once.

        Clears a stop or a backoff and abandons the fetch in flight, whose answer
        would come from an epoch that is over. An older epoch is a late update and
        the same epoch a duplicate: both change nothing. A log action in flight
        still finishes first; the Fetch follows its ``log_updated``.
        """
        if leader_epoch < self._leader_epoch:
            return []
        if leader_epoch == self._leader_epoch:
            if leader_id != self._leader_id:
                raise ValueError(f"leader epoch {leader_epoch} has leader {self._leader_id}")
            return []
        self._check_leader(leader_id)
        self._leader_id, self._leader_epoch = leader_id, leader_epoch
        self._stopped = False
        self._backoff_until = None
        self._in_flight = None
        return self._fetch_if_due()
