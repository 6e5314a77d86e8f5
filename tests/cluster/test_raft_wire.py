"""The Raft messages survive Kafka's wire: encode, serialise with kio, parse, decode."""

from __future__ import annotations

import io
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.schema.fetch import v12 as fetch_v12
from kio.schema.vote import v0 as vote_v0
from kio.serial import entity_reader, entity_writer

from kops.broker.cluster.raft import wire
from kops.broker.cluster.raft.messages import (
    BeginQuorumEpochRequest,
    BeginQuorumEpochResponse,
    EndQuorumEpochRequest,
    EndQuorumEpochResponse,
    Entry,
    FetchRequest,
    FetchResponse,
    FetchSnapshotRequest,
    FetchSnapshotResponse,
    OffsetAndEpoch,
    VoteRequest,
    VoteResponse,
)
from kops.protocol.batch import iter_batches

CLUSTER = "kops-test-cluster"


def over_the_wire(entity: Any) -> Any:
    """Serialise a kio entity to bytes and parse it back, as a peer would see it."""
    buffer = io.BytesIO()
    entity_writer(type(entity))(buffer, entity)
    parsed, _ = entity_reader(type(entity))(buffer.getvalue(), 0)
    return parsed


REQUESTS = [
    VoteRequest(candidate_epoch=7, candidate_id=2, last_offset_epoch=6, last_offset=41),
    BeginQuorumEpochRequest(leader_id=3, leader_epoch=9),
    EndQuorumEpochRequest(leader_id=1, leader_epoch=4, preferred_successors=(3, 2)),
    FetchRequest(
        correlation_id=17,
        replica_id=2,
        leader_epoch=5,
        fetch_offset=100,
        last_fetched_epoch=4,
        max_wait_ms=250,
    ),
    FetchSnapshotRequest(
        correlation_id=18, replica_id=3, leader_epoch=5, snapshot_id=OffsetAndEpoch(4, 90)
    ),
]

ENTRIES = (
    Entry(10, 3, b"", control=True),
    Entry(11, 3, b"topic a"),
    Entry(12, 3, b"topic b"),
    Entry(13, 4, b"", control=True),
    Entry(14, 4, b"broker 2"),
)

RESPONSES = [
    VoteResponse(error_code=0, leader_id=-1, leader_epoch=7, vote_granted=True),
    VoteResponse(error_code=74, leader_id=2, leader_epoch=8, vote_granted=False),
    BeginQuorumEpochResponse(error_code=0, leader_id=3, leader_epoch=9),
    EndQuorumEpochResponse(error_code=6, leader_id=2, leader_epoch=4),
    FetchResponse(
        correlation_id=17,
        error_code=0,
        leader_id=1,
        leader_epoch=4,
        high_watermark=12,
        records=ENTRIES,
    ),
    FetchResponse(
        correlation_id=17,
        error_code=0,
        leader_id=1,
        leader_epoch=4,
        high_watermark=12,
        diverging_epoch=OffsetAndEpoch(3, 8),
    ),
    FetchResponse(
        correlation_id=17,
        error_code=0,
        leader_id=1,
        leader_epoch=4,
        high_watermark=12,
        snapshot_id=OffsetAndEpoch(3, 10),
    ),
    FetchResponse(correlation_id=17, error_code=74, leader_id=3, leader_epoch=6),
    FetchSnapshotResponse(
        correlation_id=18,
        error_code=0,
        leader_id=1,
        leader_epoch=5,
        snapshot_id=OffsetAndEpoch(4, 90),
        state=b"\x00state bytes\xff",
    ),
    FetchSnapshotResponse(correlation_id=18, error_code=98, leader_id=1, leader_epoch=5),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(message: Any) -> None:
    request = wire.encode_request(message, cluster_id=CLUSTER)
    assert int(request.__api_key__) == wire.api_key_of(message)
    assert int(request.__version__) == wire.REQUEST_VERSIONS[wire.api_key_of(message)]
    corr = getattr(message, "correlation_id", 0)
    decoded = wire.decode_request(over_the_wire(request), cluster_id=CLUSTER, correlation_id=corr)
    assert decoded == message
    assert wire.sender_of(decoded) in (2, 3, 1)


@pytest.mark.parametrize("message", RESPONSES, ids=lambda m: type(m).__name__)
def test_responses_round_trip(message: Any) -> None:
    version = wire.REQUEST_VERSIONS[wire.api_key_of(message)]
    response = wire.encode_response(message, version)
    corr = getattr(message, "correlation_id", 0)
    assert wire.decode_response(over_the_wire(response), correlation_id=corr) == message


def test_fetch_records_are_kafka_batches_of_the_metadata_partition() -> None:
    response = wire.encode_response(RESPONSES[4], 12)
    assert isinstance(response, fetch_v12.FetchResponse)
    (topic,) = response.responses
    assert topic.topic == wire.METADATA_TOPIC
    (partition,) = topic.partitions
    assert partition.partition_index == wire.METADATA_PARTITION
    # Four batches: control epoch 3, data epoch 3, control epoch 4, data epoch 4.
    headers = [header for _, header in iter_batches(memoryview(partition.records or b""))]
    assert [(h.base_offset, h.partition_leader_epoch, h.is_control) for h in headers] == [
        (10, 3, True),
        (11, 3, False),
        (13, 4, True),
        (14, 4, False),
    ]


def test_another_clusters_request_is_refused() -> None:
    request = wire.encode_request(REQUESTS[0], cluster_id="someone-else")
    with pytest.raises(wire.WireError) as caught:
        wire.decode_request(over_the_wire(request), cluster_id=CLUSTER)
    assert caught.value.error_code == ErrorCode.inconsistent_cluster_id


def test_a_request_without_cluster_id_is_accepted() -> None:
    request = wire.encode_request(REQUESTS[1], cluster_id=CLUSTER)
    anonymous = type(request)(cluster_id=None, topics=request.topics)
    assert wire.decode_request(anonymous, cluster_id=CLUSTER) == REQUESTS[1]


def test_another_topic_is_unknown() -> None:
    vote = wire.encode_request(REQUESTS[0], cluster_id=CLUSTER)
    assert isinstance(vote, vote_v0.VoteRequest)
    (topic,) = vote.topics
    elsewhere = vote_v0.VoteRequest(
        cluster_id=CLUSTER,
        topics=(vote_v0.request.TopicData(topic_name="orders", partitions=topic.partitions),),
    )
    with pytest.raises(wire.WireError) as caught:
        wire.decode_request(elsewhere, cluster_id=CLUSTER)
    assert caught.value.error_code == ErrorCode.unknown_topic_or_partition


@pytest.mark.parametrize("api_key", sorted(wire.REQUEST_VERSIONS))
def test_error_responses_carry_the_code_and_decode_as_wire_errors(api_key: int) -> None:
    version = wire.REQUEST_VERSIONS[api_key]
    response = wire.error_response(api_key, version, int(ErrorCode.inconsistent_cluster_id))
    assert int(response.__api_key__) == api_key
    assert int(response.__version__) == version
    with pytest.raises(wire.WireError) as caught:
        wire.decode_response(over_the_wire(response))
    assert caught.value.error_code == ErrorCode.inconsistent_cluster_id


def test_a_response_for_another_version_is_refused() -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.encode_response(RESPONSES[4], 11)
    assert caught.value.error_code == ErrorCode.unsupported_version
