"""Which markers of an ending transaction are outstanding, and where they go (kops.broker.txn.markers)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode
from kio.schema.write_txn_markers.v1 import response as markers_response
from kio.static.primitive import i32, i64

from kops.broker.txn.markers import (
    MarkerOutcome,
    MarkerRound,
    OutstandingMarkers,
    marker_outcome,
    marker_request,
    marker_results,
)
from kops.protocol.messages import build

ME = 1
LEADERS = {("a", 0): 1, ("a", 1): 2, ("b", 0): 3, ("b", 1): 2, ("c", 0): -1}


def plan(markers: OutstandingMarkers, leaders: dict[tuple[str, int], int] = LEADERS) -> MarkerRound:
    return markers.plan(ME, lambda t, p: leaders.get((t, p)), lambda t: t != "gone")


def test_a_round_splits_markers_by_leader() -> None:
    markers = OutstandingMarkers([*LEADERS, ("gone", 0)])
    round_ = plan(markers)
    assert round_.local == (("a", 0),)
    assert dict(round_.remote) == {2: (("a", 1), ("b", 1)), 3: (("b", 0),)}
    assert round_.leaderless == (("c", 0),)
    # A deleted topic's partition needs no marker: it is no longer outstanding.
    assert ("gone", 0) not in markers.pending


def test_only_a_written_or_unneeded_marker_stops_being_outstanding() -> None:
    markers = OutstandingMarkers(LEADERS)
    assert markers.answered(("a", 0), ErrorCode.none) is MarkerOutcome.WRITTEN
    assert markers.answered(("a", 1), ErrorCode.not_leader_or_follower) is MarkerOutcome.RETRY
    assert markers.answered(("b", 0), ErrorCode.network_exception) is MarkerOutcome.RETRY
    assert markers.answered(("b", 1), ErrorCode.corrupt_message) is MarkerOutcome.UNEXPECTED
    assert markers.answered(("c", 0), ErrorCode.invalid_producer_epoch) is MarkerOutcome.NOT_NEEDED
    assert markers.pending == {("a", 1), ("b", 0), ("b", 1)}
    assert not markers.done
    # The next round goes where leadership is now: a moved leader, an elected one.
    moved = {**LEADERS, ("a", 1): 3, ("b", 0): 1}
    round_ = plan(markers, moved)
    assert round_.local == (("b", 0),)
    assert dict(round_.remote) == {3: (("a", 1),), 2: (("b", 1),)}
    for tp in list(markers.pending):
        markers.answered(tp, ErrorCode.none)
    assert markers.done


def test_every_retriable_answer_is_retried() -> None:
    for code in (
        ErrorCode.not_leader_or_follower,
        ErrorCode.unknown_topic_or_partition,
        ErrorCode.not_enough_replicas,
        ErrorCode.not_enough_replicas_after_append,
        ErrorCode.request_timed_out,
        ErrorCode.leader_not_available,
        ErrorCode.broker_not_available,
    ):
        assert marker_outcome(code) is MarkerOutcome.RETRY, code
    assert not MarkerOutcome.UNEXPECTED.done and not MarkerOutcome.RETRY.done


def test_the_request_groups_partitions_by_topic() -> None:
    request = marker_request(7, 3, True, 5, [("b", 1), ("a", 2), ("a", 0)])
    (marker,) = request.markers
    assert (marker.producer_id, marker.producer_epoch, marker.coordinator_epoch) == (7, 3, 5)
    assert marker.transaction_result is True
    assert [(t.name, list(t.partition_indexes)) for t in marker.topics] == [
        ("a", [0, 2]),
        ("b", [1]),
    ]


def test_a_partition_the_answer_leaves_out_is_not_written() -> None:
    response = build(
        markers_response.WriteTxnMarkersResponse,
        markers=(
            build(
                markers_response.WritableTxnMarkerResult,
                producer_id=i64(7),
                topics=(
                    build(
                        markers_response.WritableTxnMarkerTopicResult,
                        name="a",
                        partitions=(
                            build(
                                markers_response.WritableTxnMarkerPartitionResult,
                                partition_index=i32(0),
                                error_code=ErrorCode.none,
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
    answers = marker_results(response, [("a", 0), ("a", 1)])
    assert answers[("a", 0)] == ErrorCode.none
    assert marker_outcome(answers[("a", 1)]) is MarkerOutcome.UNEXPECTED
