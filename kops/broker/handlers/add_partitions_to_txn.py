"""AddPartitionsToTxn (key 24): v0-3.

- The producer's transaction now includes these partitions, so the coordinator
  will write its commit or abort marker to each (kops.broker.txn).
- A partition that does not exist gets UNKNOWN_TOPIC_OR_PARTITION and the
  others OPERATION_NOT_ATTEMPTED, none being added (as Kafka).
- Every partition gets the coordinator's answer: INVALID_PRODUCER_ID_MAPPING
  for an unknown transactional id or producer id, PRODUCER_FENCED for an old
  epoch, CONCURRENT_TRANSACTIONS while the previous transaction is being ended.
- v2+: PRODUCER_FENCED (KIP-588); before, INVALID_PRODUCER_EPOCH. v3+: flexible.
  v4+ (KIP-890's batched broker-to-coordinator form) is not served.
"""

from __future__ import annotations

import datetime

from kio.schema.add_partitions_to_txn import v0, v1, v2, v3
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.txn.state import for_version

API_KEY = 24
MIN_VERSION = 0
MAX_VERSION = 3

Request = (
    v0.AddPartitionsToTxnRequest
    | v1.AddPartitionsToTxnRequest
    | v2.AddPartitionsToTxnRequest
    | v3.AddPartitionsToTxnRequest
)
Response = (
    v0.AddPartitionsToTxnResponse
    | v1.AddPartitionsToTxnResponse
    | v2.AddPartitionsToTxnResponse
    | v3.AddPartitionsToTxnResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    wanted = [(t.name, int(p)) for t in request.v3_and_below_topics for p in t.partitions]
    codes: dict[tuple[str, int], ErrorCode] = {}
    unknown = {
        (topic, index)
        for topic, index in wanted
        if (record := ctx.broker.topic(topic)) is None or not 0 <= index < record.partitions
    }
    transactions = ctx.broker.transactions
    if unknown:
        codes = {
            tp: ErrorCode.unknown_topic_or_partition
            if tp in unknown
            else ErrorCode.operation_not_attempted
            for tp in wanted
        }
    elif transactions is None:
        codes = dict.fromkeys(wanted, ErrorCode.coordinator_not_available)
    else:
        code = await transactions.add_partitions(
            request.v3_and_below_transactional_id,
            int(request.v3_and_below_producer_id),
            int(request.v3_and_below_producer_epoch),
            wanted,
        )
        codes = dict.fromkeys(wanted, for_version(code, ctx.api_version, 2))
    topics = tuple(
        ctx.make(
            "AddPartitionsToTxnTopicResult",
            name=t.name,
            results_by_partition=tuple(
                ctx.make(
                    "AddPartitionsToTxnPartitionResult",
                    partition_index=p,
                    partition_error_code=codes[(t.name, int(p))],
                )
                for p in t.partitions
            ),
        )
        for t in request.v3_and_below_topics
    )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), results_by_topic_v3_and_below=topics)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
