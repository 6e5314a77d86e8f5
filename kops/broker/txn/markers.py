"""Which markers of an ending transaction are still outstanding, and where to send them (sans-io).

A transaction that is to commit or abort is complete once every partition it
touched has its marker, committed there (in the ISR): only then may the
coordinator record CompleteCommit/CompleteAbort. :class:`OutstandingMarkers`
keeps the partitions still without one. Each round the coordinator asks it for
a :class:`MarkerRound` against the leadership it knows now (written here, sent
to another broker's leader with WriteTxnMarkers, or waiting for a leader) and
hands back every answer; what an answer means is Kafka's
(TransactionMarkerRequestCompletionHandler):

- NONE: the partition has its marker.
- a retriable code (the leader moved, is not elected yet, lost its ISR, timed
  out, or could not be reached): again next round, with leadership refreshed.
- INVALID_PRODUCER_EPOCH / PRODUCER_FENCED: the partition has seen a newer epoch
  of the producer id, which only a later transaction of the id can have written
  (a newer epoch is handed out only once this one is complete): nothing left to
  end there.
- UNSUPPORTED_FOR_MESSAGE_FORMAT / UNSUPPORTED_VERSION: the producer could not
  have written there either.
- anything else: retried, loudly; dropping a marker would leave the
  transaction's records there undecided.

A partition of a deleted topic needs no marker (its records went with it).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode
from kio.schema.types import ProducerId, TopicName
from kio.schema.write_txn_markers.v1 import request as markers_request
from kio.schema.write_txn_markers.v1 import response as markers_response
from kio.static.primitive import i16, i32, i64

__all__ = [
    "MarkerOutcome",
    "MarkerRound",
    "OutstandingMarkers",
    "marker_outcome",
    "marker_request",
    "marker_results",
]

TopicPartition = tuple[str, int]

RETRIABLE = frozenset(
    {
        ErrorCode.not_leader_or_follower,
        ErrorCode.unknown_topic_or_partition,
        ErrorCode.not_enough_replicas,
        ErrorCode.not_enough_replicas_after_append,
        ErrorCode.request_timed_out,
        ErrorCode.kafka_storage_error,
        ErrorCode.network_exception,
        ErrorCode.fenced_leader_epoch,
        ErrorCode.unknown_leader_epoch,
        ErrorCode.broker_not_available,
        ErrorCode.leader_not_available,
    }
)
_ENDED_ELSEWHERE = frozenset({ErrorCode.invalid_producer_epoch, ErrorCode.producer_fenced})
_NEVER_WRITTEN = frozenset(
    {ErrorCode.unsupported_for_message_format, ErrorCode.unsupported_version}
)


class MarkerOutcome(enum.Enum):
    WRITTEN = "written"
    NOT_NEEDED = "not needed"
    RETRY = "retry"
    UNEXPECTED = "unexpected"  # retried, and worth a warning

    @property
    def done(self) -> bool:
        return self in (MarkerOutcome.WRITTEN, MarkerOutcome.NOT_NEEDED)


def marker_outcome(code: ErrorCode) -> MarkerOutcome:
    if code == ErrorCode.none:
        return MarkerOutcome.WRITTEN
    if code in _ENDED_ELSEWHERE or code in _NEVER_WRITTEN:
        return MarkerOutcome.NOT_NEEDED
    if code in RETRIABLE:
        return MarkerOutcome.RETRY
    return MarkerOutcome.UNEXPECTED


@dataclass(frozen=True, slots=True)
class MarkerRound:
    """One round's work: partitions this broker leads, those to send to each other
    leader (by broker id), and those without a leader this round."""

    local: tuple[TopicPartition, ...] = ()
    remote: Mapping[int, tuple[TopicPartition, ...]] = field(default_factory=dict)
    leaderless: tuple[TopicPartition, ...] = ()


class OutstandingMarkers:
    """The partitions of one ending transaction that do not have their marker yet."""

    def __init__(self, partitions: Iterable[TopicPartition]) -> None:
        self.pending: set[TopicPartition] = set(partitions)

    @property
    def done(self) -> bool:
        return not self.pending

    def plan(
        self,
        local_id: int,
        leader_of: Callable[[str, int], int | None],
        topic_exists: Callable[[str], bool],
    ) -> MarkerRound:
        """Where each outstanding marker goes now. A deleted topic's partitions are
        dropped here; `leader_of` answers None (or a negative id) for no leader."""
        local: list[TopicPartition] = []
        remote: dict[int, list[TopicPartition]] = {}
        leaderless: list[TopicPartition] = []
        for tp in sorted(self.pending):
            if not topic_exists(tp[0]):
                self.pending.discard(tp)
                continue
            leader = leader_of(*tp)
            if leader is None or leader < 0:
                leaderless.append(tp)
            elif leader == local_id:
                local.append(tp)
            else:
                remote.setdefault(leader, []).append(tp)
        return MarkerRound(
            tuple(local), {b: tuple(tps) for b, tps in remote.items()}, tuple(leaderless)
        )

    def answered(self, tp: TopicPartition, code: ErrorCode) -> MarkerOutcome:
        outcome = marker_outcome(code)
        if outcome.done:
            self.pending.discard(tp)
        return outcome


def marker_request(
    producer_id: int,
    producer_epoch: int,
    commit: bool,
    coordinator_epoch: int,
    partitions: Iterable[TopicPartition],
) -> markers_request.WriteTxnMarkersRequest:
    """The WriteTxnMarkers (v1, as Kafka 3.x's coordinator sends) for one transaction."""
    by_topic: dict[str, list[int]] = {}
    for topic, index in sorted(partitions):
        by_topic.setdefault(topic, []).append(index)
    request = markers_request
    return request.WriteTxnMarkersRequest(
        markers=(
            request.WritableTxnMarker(
                producer_id=ProducerId(i64(producer_id)),
                producer_epoch=i16(producer_epoch),
                transaction_result=commit,
                topics=tuple(
                    request.WritableTxnMarkerTopic(
                        name=TopicName(topic), partition_indexes=tuple(i32(i) for i in indexes)
                    )
                    for topic, indexes in by_topic.items()
                ),
                coordinator_epoch=i32(coordinator_epoch),
            ),
        )
    )


def marker_results(
    response: markers_response.WriteTxnMarkersResponse, asked: Iterable[TopicPartition]
) -> dict[TopicPartition, ErrorCode]:
    """Each asked partition's answer; one the response leaves out counts as unanswered
    (retried), so a short answer never completes a transaction."""
    found = {
        (str(topic.name), int(p.partition_index)): p.error_code
        for marker in response.markers
        for topic in marker.topics
        for p in topic.partitions
    }
    return {tp: found.get(tp, ErrorCode.unknown_server_error) for tp in asked}
