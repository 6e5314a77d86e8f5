"""TxnOffsetCommit (key 28): v0-3.

- Offsets a transactional producer commits for a consumer group
  (send_offsets_to_transaction): written to the group's offsets partition at
  once, visible to OffsetFetch only when the transaction commits, dropped when
  it aborts (kops.broker.groups.txn_offsets).
- The producer must be the transactional id's current one, else
  INVALID_PRODUCER_ID_MAPPING or PRODUCER_FENCED (v0-2: INVALID_PRODUCER_EPOCH,
  as KIP-588 maps it for clients that predate the code). That is checked where
  this broker also coordinates the transactional id (always on a single broker);
  elsewhere in a cluster, as in Kafka, the offsets partition refuses a batch of
  an epoch older than the producer's, and the transaction's abort marker ends
  whatever a fenced producer still wrote.
- v2+: committed_leader_epoch. v3+: flexible; generation_id, member_id and
  group_instance_id (KIP-447) are checked as OffsetCommit checks them; generation
  -1 skips the membership check.
- The answer waits until the offsets partition's ISR has the records
  (offsets.commit.timeout.ms), as OffsetCommit's does.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.txn_offset_commit import v0, v1, v2, v3

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.handlers.offset_commit import wait_replicated
from kops.broker.txn.state import for_version

API_KEY = 28
MIN_VERSION = 0
MAX_VERSION = 3

Request = (
    v0.TxnOffsetCommitRequest
    | v1.TxnOffsetCommitRequest
    | v2.TxnOffsetCommitRequest
    | v3.TxnOffsetCommitRequest
)
Response = (
    v0.TxnOffsetCommitResponse
    | v1.TxnOffsetCommitResponse
    | v2.TxnOffsetCommitResponse
    | v3.TxnOffsetCommitResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    offsets = [
        (
            t.name,
            int(p.partition_index),
            int(p.committed_offset),
            # v0-1 partitions have no committed_leader_epoch.
            int(getattr(p, "committed_leader_epoch", -1)),
            p.committed_metadata,
        )
        for t in request.topics
        for p in t.partitions
    ]
    transactions = ctx.broker.transactions
    groups = ctx.broker.coordinator(request.group_id)
    if transactions is None or groups is None:
        errors = [ErrorCode.coordinator_not_available] * len(offsets)
    elif code := transactions.check_producer(
        request.transactional_id, int(request.producer_id), int(request.producer_epoch)
    ):
        errors = [for_version(code, ctx.api_version, 3)] * len(offsets)
    else:
        v3_request = request if isinstance(request, v3.TxnOffsetCommitRequest) else None
        errors = groups.commit_transactional_offsets(
            request.group_id,
            int(request.producer_id),
            int(request.producer_epoch),
            int(v3_request.generation_id) if v3_request else -1,
            v3_request.member_id if v3_request else "",
            v3_request.group_instance_id if v3_request else None,
            offsets,
        )
        if ErrorCode.none in errors:
            errors = await wait_replicated(ctx, groups, request.group_id, errors)
        errors = [for_version(code, ctx.api_version, 3) for code in errors]
    codes = iter(errors)
    topics = tuple(
        ctx.make(
            "TxnOffsetCommitResponseTopic",
            name=t.name,
            partitions=tuple(
                ctx.make(
                    "TxnOffsetCommitResponsePartition",
                    partition_index=p.partition_index,
                    error_code=next(codes),
                )
                for p in t.partitions
            ),
        )
        for t in request.topics
    )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=topics)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
