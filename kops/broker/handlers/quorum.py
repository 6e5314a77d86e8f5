"""KRaft's quorum APIs, served to the other voters on the one listener.

One module for five API keys, against the one-module-per-API rule, because
they are one protocol and four of them are the same step: hand the typed
request to the broker's QuorumDriver, which decodes it, lets the Raft node
answer and encodes the answer for the request's version.

- Vote (52) v0, BeginQuorumEpoch (53) v0, EndQuorumEpoch (54) v0,
  FetchSnapshot (59) v0: the versions before KIP-853's voter directory ids and
  endpoints (kops voters come from ``controller.quorum.voters``). The quorum's
  Fetch rides on the Fetch API (v12+, topic ``__cluster_metadata``).
- DescribeQuorum (55) v0-1, as ``kafka-metadata-quorum.sh describe --status``
  asks it: answered by the leader; other voters answer NOT_LEADER_OR_FOLLOWER
  with the leader they know. v1 adds the last fetch time per voter (Unix ms);
  last caught-up time is not tracked (-1).
- A broker without a quorum (no ``controller.quorum.voters``) has no
  ``__cluster_metadata`` partition: UNKNOWN_TOPIC_OR_PARTITION.
"""

from __future__ import annotations

from typing import Any

from kio.schema.begin_quorum_epoch import v0 as begin_v0
from kio.schema.describe_quorum import v0 as describe_v0
from kio.schema.describe_quorum import v1 as describe_v1
from kio.schema.end_quorum_epoch import v0 as end_v0
from kio.schema.errors import ErrorCode
from kio.schema.fetch_snapshot import v0 as snapshot_v0
from kio.schema.vote import v0 as vote_v0
from kio.static.protocol import ResponsePayload

from kops.broker.cluster.raft import wire
from kops.broker.cluster.raft.core import NotLeaderError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

VOTE_KEY = 52
BEGIN_QUORUM_EPOCH_KEY = 53
END_QUORUM_EPOCH_KEY = 54
DESCRIBE_QUORUM_KEY = 55
FETCH_SNAPSHOT_KEY = 59

PeerRequest = (
    vote_v0.VoteRequest
    | begin_v0.BeginQuorumEpochRequest
    | end_v0.EndQuorumEpochRequest
    | snapshot_v0.FetchSnapshotRequest
)


async def serve_peer(ctx: RequestContext, request: Any) -> ResponsePayload:
    """Vote, Begin/EndQuorumEpoch, FetchSnapshot and the quorum's Fetch all end here."""
    quorum = ctx.broker.quorum
    if quorum is None:
        return wire.error_response(
            ctx.api_key, ctx.api_version, int(ErrorCode.unknown_topic_or_partition)
        )
    return await quorum.serve(request, ctx.api_version)


VOTE = ApiHandler(VOTE_KEY, 0, 0, serve_peer)
BEGIN_QUORUM_EPOCH = ApiHandler(BEGIN_QUORUM_EPOCH_KEY, 0, 0, serve_peer)
END_QUORUM_EPOCH = ApiHandler(END_QUORUM_EPOCH_KEY, 0, 0, serve_peer)
FETCH_SNAPSHOT = ApiHandler(FETCH_SNAPSHOT_KEY, 0, 0, serve_peer)


DescribeRequest = describe_v0.DescribeQuorumRequest | describe_v1.DescribeQuorumRequest
DescribeResponse = describe_v0.DescribeQuorumResponse | describe_v1.DescribeQuorumResponse
DESCRIBE_REPLY: Reply[DescribeResponse] = Reply(DESCRIBE_QUORUM_KEY)


async def describe_quorum(ctx: RequestContext, request: DescribeRequest) -> DescribeResponse:
    topics = []
    for topic in request.topics:
        partitions = [
            _describe_partition(ctx, topic.topic_name, p.partition_index) for p in topic.partitions
        ]
        topics.append(ctx.make("TopicData", topic_name=topic.topic_name, partitions=partitions))
    return DESCRIBE_REPLY(ctx, error_code=ErrorCode.none, topics=tuple(topics))


def _describe_partition(ctx: RequestContext, topic: str, index: int) -> Any:
    def partition(error: ErrorCode, leader: int = -1, epoch: int = -1, hw: int = -1,
                  voters: tuple[Any, ...] = ()) -> Any:  # fmt: skip
        return ctx.make(
            "PartitionData",
            partition_index=index,
            error_code=error,
            leader_id=leader,
            leader_epoch=epoch,
            high_watermark=hw,
            current_voters=voters,
            observers=(),
        )

    quorum = ctx.broker.quorum
    if quorum is None or (topic, index) != (wire.METADATA_TOPIC, wire.METADATA_PARTITION):
        return partition(ErrorCode.unknown_topic_or_partition)
    try:
        description = quorum.describe()
    except NotLeaderError as exc:
        leader = -1 if exc.leader_id is None else exc.leader_id
        return partition(ErrorCode.not_leader_or_follower, leader, exc.epoch)
    voters = tuple(
        ctx.make(
            "ReplicaState",
            replica_id=state.replica_id,
            log_end_offset=state.log_end_offset,
            # Kafka reports -1 for the leader itself.
            last_fetch_timestamp=-1
            if state.replica_id == description.leader_id
            else quorum.wall_clock_ms(state.last_fetch_ms),
            last_caught_up_timestamp=-1,
        )
        for state in description.voters
    )
    return partition(
        ErrorCode.none,
        description.leader_id,
        description.leader_epoch,
        description.high_watermark,
        voters,
    )


DESCRIBE_QUORUM = ApiHandler(DESCRIBE_QUORUM_KEY, 0, 1, describe_quorum)
