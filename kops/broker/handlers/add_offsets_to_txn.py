"""AddOffsetsToTxn (key 25): v0-3.

- The producer's transaction now includes the group's `__consumer_offsets`
  partition, so its TxnOffsetCommit offsets are committed or dropped with it
  (send_offsets_to_transaction's first step).
- Errors as AddPartitionsToTxn's; v2+: PRODUCER_FENCED (KIP-588), before,
  INVALID_PRODUCER_EPOCH. v3+: flexible.
"""

from __future__ import annotations

import datetime

from kio.schema.add_offsets_to_txn import v0, v1, v2, v3
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.txn.state import for_version

API_KEY = 25
MIN_VERSION = 0
MAX_VERSION = 3

Request = (
    v0.AddOffsetsToTxnRequest
    | v1.AddOffsetsToTxnRequest
    | v2.AddOffsetsToTxnRequest
    | v3.AddOffsetsToTxnRequest
)
Response = (
    v0.AddOffsetsToTxnResponse
    | v1.AddOffsetsToTxnResponse
    | v2.AddOffsetsToTxnResponse
    | v3.AddOffsetsToTxnResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    transactions = ctx.broker.transactions
    groups = ctx.broker.coordinator(request.group_id)
    if transactions is None or groups is None or not groups.store.partitions:
        code = ErrorCode.coordinator_not_available
    elif not request.group_id:
        code = ErrorCode.invalid_group_id
    else:
        code = await transactions.add_offsets(
            request.transactional_id,
            int(request.producer_id),
            int(request.producer_epoch),
            groups.store.partition_for(request.group_id),
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=for_version(code, ctx.api_version, 2),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
