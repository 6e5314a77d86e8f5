"""The Raft messages on Kafka's wire: kio's KRaft schemas in, dataclasses out.

The sans-io core speaks ``messages``; peers speak Vote (52), BeginQuorumEpoch
(53), EndQuorumEpoch (54), FetchSnapshot (59) v0 and Fetch (1) v12 for the one
partition ``__cluster_metadata-0``, as KRaft does. This module is the only
mapping between the two and does no IO.

- The sender travels inside each request (candidate, leader or replica id),
  so ``sender_of`` reads it from the decoded message.
- Fetch and FetchSnapshot carry no correlation id in their bodies (Kafka's is
  in the request header): the caller passes one in and gets it back on the
  decoded message, which is how the driver matches answers to questions.
- A request for another cluster id is refused with INCONSISTENT_CLUSTER_ID and
  one for another topic or partition with UNKNOWN_TOPIC_OR_PARTITION, both as
  ``WireError``; the caller answers with ``error_response``.
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.begin_quorum_epoch import v0 as begin_v0
from kio.schema.end_quorum_epoch import v0 as end_v0
from kio.schema.errors import ErrorCode
from kio.schema.fetch import v12 as fetch_v12
from kio.schema.fetch_snapshot import v0 as snapshot_v0
from kio.schema.types import BrokerId, TopicName
from kio.schema.vote import v0 as vote_v0
from kio.static.primitive import Records, i8, i32, i32Timedelta, i64
from kio.static.protocol import RequestPayload, ResponsePayload

from kops.broker.cluster.raft.messages import (
    BeginQuorumEpochRequest,
    BeginQuorumEpochResponse,
    EndQuorumEpochRequest,
    EndQuorumEpochResponse,
    FetchRequest,
    FetchResponse,
    FetchSnapshotRequest,
    FetchSnapshotResponse,
    OffsetAndEpoch,
    Request,
    Response,
    VoteRequest,
    VoteResponse,
)
from kops.broker.cluster.raft.records import entries_to_records, records_to_entries
from kops.broker.log.manager import METADATA_TOPIC
from kops.errors import KopsError

__all__ = [
    "METADATA_PARTITION",
    "METADATA_TOPIC",
    "REQUEST_VERSIONS",
    "WireError",
    "api_key_of",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_response",
    "sender_of",
]

METADATA_PARTITION = 0

VOTE_KEY, BEGIN_KEY, END_KEY, FETCH_KEY, SNAPSHOT_KEY = 52, 53, 54, 1, 59
# The one version of each API the quorum speaks.
REQUEST_VERSIONS = {VOTE_KEY: 0, BEGIN_KEY: 0, END_KEY: 0, FETCH_KEY: 12, SNAPSHOT_KEY: 0}

# A fetch brings back at most this much of the metadata log at once.
_FETCH_MAX_BYTES = 8 * 1024 * 1024
_NO_ID = OffsetAndEpoch(-1, -1)


class WireError(KopsError):
    """A quorum request or response that cannot be mapped; ``error_code`` is Kafka's."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def api_key_of(message: Request | Response) -> int:
    if isinstance(message, VoteRequest | VoteResponse):
        return VOTE_KEY
    if isinstance(message, BeginQuorumEpochRequest | BeginQuorumEpochResponse):
        return BEGIN_KEY
    if isinstance(message, EndQuorumEpochRequest | EndQuorumEpochResponse):
        return END_KEY
    if isinstance(message, FetchRequest | FetchResponse):
        return FETCH_KEY
    return SNAPSHOT_KEY


def sender_of(message: Request) -> int:
    """The node a request comes from, as its body names it."""
    if isinstance(message, VoteRequest):
        return message.candidate_id
    if isinstance(message, BeginQuorumEpochRequest | EndQuorumEpochRequest):
        return message.leader_id
    return message.replica_id


# ---- requests --------------------------------------------------------------------------


def encode_request(message: Request, *, cluster_id: str) -> RequestPayload:
    topic = TopicName(METADATA_TOPIC)
    part = i32(METADATA_PARTITION)
    if isinstance(message, VoteRequest):
        return vote_v0.VoteRequest(
            cluster_id=cluster_id,
            topics=(
                vote_v0.request.TopicData(
                    topic_name=topic,
                    partitions=(
                        vote_v0.request.PartitionData(
                            partition_index=part,
                            replica_epoch=i32(message.candidate_epoch),
                            replica_id=BrokerId(message.candidate_id),
                            last_offset_epoch=i32(message.last_offset_epoch),
                            last_offset=i64(message.last_offset),
                        ),
                    ),
                ),
            ),
        )
    if isinstance(message, BeginQuorumEpochRequest):
        return begin_v0.BeginQuorumEpochRequest(
            cluster_id=cluster_id,
            topics=(
                begin_v0.request.TopicData(
                    topic_name=topic,
                    partitions=(
                        begin_v0.request.PartitionData(
                            partition_index=part,
                            leader_id=BrokerId(message.leader_id),
                            leader_epoch=i32(message.leader_epoch),
                        ),
                    ),
                ),
            ),
        )
    if isinstance(message, EndQuorumEpochRequest):
        return end_v0.EndQuorumEpochRequest(
            cluster_id=cluster_id,
            topics=(
                end_v0.request.TopicData(
                    topic_name=topic,
                    partitions=(
                        end_v0.request.PartitionData(
                            partition_index=part,
                            leader_id=BrokerId(message.leader_id),
                            leader_epoch=i32(message.leader_epoch),
                            preferred_successors=tuple(
                                i32(n) for n in message.preferred_successors
                            ),
                        ),
                    ),
                ),
            ),
        )
    if isinstance(message, FetchRequest):
        return fetch_v12.FetchRequest(
            cluster_id=cluster_id,
            replica_id=BrokerId(message.replica_id),
            max_wait=i32Timedelta.parse(datetime.timedelta(milliseconds=message.max_wait_ms)),
            min_bytes=i32(0),
            max_bytes=i32(_FETCH_MAX_BYTES),
            isolation_level=i8(0),
            session_id=i32(0),
            session_epoch=i32(-1),
            topics=(
                fetch_v12.request.FetchTopic(
                    topic=topic,
                    partitions=(
                        fetch_v12.request.FetchPartition(
                            partition=part,
                            current_leader_epoch=i32(message.leader_epoch),
                            fetch_offset=i64(message.fetch_offset),
                            last_fetched_epoch=i32(message.last_fetched_epoch),
                            log_start_offset=i64(-1),
                            partition_max_bytes=i32(_FETCH_MAX_BYTES),
                        ),
                    ),
                ),
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
    return snapshot_v0.FetchSnapshotRequest(
        cluster_id=cluster_id,
        replica_id=BrokerId(message.replica_id),
        max_bytes=i32(2**31 - 1),
        topics=(
            snapshot_v0.request.TopicSnapshot(
                name=topic,
                partitions=(
                    snapshot_v0.request.PartitionSnapshot(
                        partition=part,
                        current_leader_epoch=i32(message.leader_epoch),
                        snapshot_id=snapshot_v0.request.SnapshotId(
                            end_offset=i64(message.snapshot_id.offset),
                            epoch=i32(message.snapshot_id.epoch),
                        ),
                        position=i64(0),
                    ),
                ),
            ),
        ),
    )


def _only_partition(topics: tuple[Any, ...], topic_attr: str, index_attr: str) -> Any:
    """The one ``__cluster_metadata-0`` entry of a request, or WireError."""
    if len(topics) != 1 or getattr(topics[0], topic_attr) != METADATA_TOPIC:
        raise WireError(int(ErrorCode.unknown_topic_or_partition), "not the metadata topic")
    partitions = topics[0].partitions
    if len(partitions) != 1 or getattr(partitions[0], index_attr) != METADATA_PARTITION:
        raise WireError(int(ErrorCode.unknown_topic_or_partition), "not the metadata partition")
    return partitions[0]


def decode_request(request: Any, *, cluster_id: str, correlation_id: int = 0) -> Request:
    """A kio quorum request as a Raft message; WireError if it is not for this quorum."""
    if request.cluster_id is not None and request.cluster_id != cluster_id:
        raise WireError(
            int(ErrorCode.inconsistent_cluster_id),
            f"cluster id {request.cluster_id!r} is not {cluster_id!r}",
        )
    if isinstance(request, vote_v0.VoteRequest):
        p = _only_partition(request.topics, "topic_name", "partition_index")
        return VoteRequest(p.replica_epoch, p.replica_id, p.last_offset_epoch, p.last_offset)
    if isinstance(request, begin_v0.BeginQuorumEpochRequest):
        p = _only_partition(request.topics, "topic_name", "partition_index")
        return BeginQuorumEpochRequest(p.leader_id, p.leader_epoch)
    if isinstance(request, end_v0.EndQuorumEpochRequest):
        p = _only_partition(request.topics, "topic_name", "partition_index")
        return EndQuorumEpochRequest(p.leader_id, p.leader_epoch, tuple(p.preferred_successors))
    if isinstance(request, fetch_v12.FetchRequest):
        p = _only_partition(request.topics, "topic", "partition")
        if request.replica_id < 0:
            # A client, not a replica: the metadata log is the quorum's own.
            raise WireError(int(ErrorCode.unknown_topic_or_partition), "not readable by clients")
        return FetchRequest(
            correlation_id,
            request.replica_id,
            p.current_leader_epoch,
            p.fetch_offset,
            p.last_fetched_epoch,
            max(0, int(request.max_wait.total_seconds() * 1000)),
        )
    if isinstance(request, snapshot_v0.FetchSnapshotRequest):
        p = _only_partition(request.topics, "name", "partition")
        if p.position != 0:
            # Snapshots go in one piece (see messages.FetchSnapshotRequest).
            raise WireError(int(ErrorCode.invalid_request), "snapshot position must be 0")
        return FetchSnapshotRequest(
            correlation_id,
            request.replica_id,
            p.current_leader_epoch,
            OffsetAndEpoch(p.snapshot_id.epoch, p.snapshot_id.end_offset),
        )
    raise WireError(int(ErrorCode.invalid_request), f"{type(request).__name__} is no quorum API")


# ---- responses -------------------------------------------------------------------------


def encode_response(message: Response, api_version: int) -> ResponsePayload:
    """The kio response for a Raft answer (``api_version`` is the request's)."""
    key = api_key_of(message)
    if api_version != REQUEST_VERSIONS[key]:
        raise WireError(
            int(ErrorCode.unsupported_version), f"api {key} v{api_version} is not the quorum's"
        )
    topic = TopicName(METADATA_TOPIC)
    part = i32(METADATA_PARTITION)
    if isinstance(message, VoteResponse):
        return vote_v0.VoteResponse(
            error_code=ErrorCode.none,
            topics=(
                vote_v0.response.TopicData(
                    topic_name=topic,
                    partitions=(
                        vote_v0.response.PartitionData(
                            partition_index=part,
                            error_code=ErrorCode(message.error_code),
                            leader_id=BrokerId(message.leader_id),
                            leader_epoch=i32(message.leader_epoch),
                            vote_granted=message.vote_granted,
                        ),
                    ),
                ),
            ),
        )
    if isinstance(message, BeginQuorumEpochResponse | EndQuorumEpochResponse):
        schema = begin_v0 if isinstance(message, BeginQuorumEpochResponse) else end_v0
        response_cls = (
            begin_v0.BeginQuorumEpochResponse
            if schema is begin_v0
            else end_v0.EndQuorumEpochResponse
        )
        return response_cls(
            error_code=ErrorCode.none,
            topics=(
                schema.response.TopicData(
                    topic_name=topic,
                    partitions=(
                        schema.response.PartitionData(
                            partition_index=part,
                            error_code=ErrorCode(message.error_code),
                            leader_id=BrokerId(message.leader_id),
                            leader_epoch=i32(message.leader_epoch),
                        ),
                    ),
                ),
            ),
        )
    if isinstance(message, FetchResponse):
        diverging = message.diverging_epoch or _NO_ID
        snapshot = message.snapshot_id or _NO_ID
        return fetch_v12.FetchResponse(
            throttle_time=i32Timedelta.parse(datetime.timedelta(0)),
            error_code=ErrorCode.none,
            session_id=i32(0),
            responses=(
                fetch_v12.response.FetchableTopicResponse(
                    topic=topic,
                    partitions=(
                        fetch_v12.response.PartitionData(
                            partition_index=part,
                            error_code=ErrorCode(message.error_code),
                            high_watermark=i64(message.high_watermark),
                            last_stable_offset=i64(message.high_watermark),
                            log_start_offset=i64(-1),
                            diverging_epoch=fetch_v12.response.EpochEndOffset(
                                epoch=i32(diverging.epoch), end_offset=i64(diverging.offset)
                            ),
                            current_leader=fetch_v12.response.LeaderIdAndEpoch(
                                leader_id=BrokerId(message.leader_id),
                                leader_epoch=i32(message.leader_epoch),
                            ),
                            snapshot_id=fetch_v12.response.SnapshotId(
                                end_offset=i64(snapshot.offset), epoch=i32(snapshot.epoch)
                            ),
                            aborted_transactions=None,
                            preferred_read_replica=BrokerId(-1),
                            records=Records.parse(entries_to_records(message.records))
                            if message.records
                            else None,
                        ),
                    ),
                ),
            ),
        )
    snapshot_id = message.snapshot_id or _NO_ID
    return snapshot_v0.FetchSnapshotResponse(
        throttle_time=i32Timedelta.parse(datetime.timedelta(0)),
        error_code=ErrorCode.none,
        topics=(
            snapshot_v0.response.TopicSnapshot(
                name=topic,
                partitions=(
                    snapshot_v0.response.PartitionSnapshot(
                        index=part,
                        error_code=ErrorCode(message.error_code),
                        snapshot_id=snapshot_v0.response.SnapshotId(
                            end_offset=i64(snapshot_id.offset), epoch=i32(snapshot_id.epoch)
                        ),
                        current_leader=snapshot_v0.response.LeaderIdAndEpoch(
                            leader_id=BrokerId(message.leader_id),
                            leader_epoch=i32(message.leader_epoch),
                        ),
                        size=i64(len(message.state)),
                        position=i64(0),
                        unaligned_records=Records.parse(message.state),
                    ),
                ),
            ),
        ),
    )


def error_response(api_key: int, api_version: int, error_code: int) -> ResponsePayload:
    """A response carrying only a top-level error, for requests that never reach the node."""
    code = ErrorCode(error_code)
    if api_key == VOTE_KEY:
        return vote_v0.VoteResponse(error_code=code, topics=())
    if api_key == BEGIN_KEY:
        return begin_v0.BeginQuorumEpochResponse(error_code=code, topics=())
    if api_key == END_KEY:
        return end_v0.EndQuorumEpochResponse(error_code=code, topics=())
    if api_key == SNAPSHOT_KEY:
        return snapshot_v0.FetchSnapshotResponse(
            throttle_time=i32Timedelta.parse(datetime.timedelta(0)), error_code=code, topics=()
        )
    if api_key == FETCH_KEY and api_version == REQUEST_VERSIONS[FETCH_KEY]:
        return fetch_v12.FetchResponse(
            throttle_time=i32Timedelta.parse(datetime.timedelta(0)),
            error_code=code,
            session_id=i32(0),
            responses=(),
        )
    raise WireError(int(ErrorCode.unsupported_version), f"api {api_key} v{api_version}")


def _first_partition(topics: tuple[Any, ...]) -> Any:
    if len(topics) != 1 or len(topics[0].partitions) != 1:
        raise WireError(int(ErrorCode.unknown_server_error), "expected one metadata partition")
    return topics[0].partitions[0]


def _id_or_none(epoch: int, offset: int) -> OffsetAndEpoch | None:
    return None if epoch < 0 or offset < 0 else OffsetAndEpoch(epoch, offset)


def decode_response(response: Any, *, correlation_id: int = 0) -> Response:
    """A kio quorum response as a Raft message; WireError for a top-level error."""
    if response.error_code != ErrorCode.none:
        raise WireError(int(response.error_code), f"peer answered {response.error_code.name}")
    if isinstance(response, vote_v0.VoteResponse):
        p = _first_partition(response.topics)
        return VoteResponse(int(p.error_code), p.leader_id, p.leader_epoch, p.vote_granted)
    if isinstance(response, begin_v0.BeginQuorumEpochResponse):
        p = _first_partition(response.topics)
        return BeginQuorumEpochResponse(int(p.error_code), p.leader_id, p.leader_epoch)
    if isinstance(response, end_v0.EndQuorumEpochResponse):
        p = _first_partition(response.topics)
        return EndQuorumEpochResponse(int(p.error_code), p.leader_id, p.leader_epoch)
    if isinstance(response, fetch_v12.FetchResponse):
        p = _first_partition(response.responses)
        try:
            entries = records_to_entries(p.records)
        except Exception as exc:  # a corrupt batch from a peer: drop the answer
            raise WireError(int(ErrorCode.corrupt_message), f"bad metadata records: {exc}") from exc
        return FetchResponse(
            correlation_id,
            int(p.error_code),
            p.current_leader.leader_id,
            p.current_leader.leader_epoch,
            p.high_watermark,
            entries,
            _id_or_none(p.diverging_epoch.epoch, p.diverging_epoch.end_offset),
            _id_or_none(p.snapshot_id.epoch, p.snapshot_id.end_offset),
        )
    if isinstance(response, snapshot_v0.FetchSnapshotResponse):
        p = _first_partition(response.topics)
        return FetchSnapshotResponse(
            correlation_id,
            int(p.error_code),
            p.current_leader.leader_id,
            p.current_leader.leader_epoch,
            _id_or_none(p.snapshot_id.epoch, p.snapshot_id.end_offset),
            bytes(p.unaligned_records or b""),
        )
    raise WireError(int(ErrorCode.unknown_server_error), f"{type(response).__name__} unexpected")
