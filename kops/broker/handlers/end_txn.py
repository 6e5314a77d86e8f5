"""EndTxn (key 26): v0-3.

- committed true: the transaction commits, false: it aborts. The answer comes
  once the decision is in `__transaction_state`; the markers follow, and until
  they are all written the next InitProducerId or AddPartitionsToTxn of the
  id gets CONCURRENT_TRANSACTIONS (the client retries).
- A retried EndTxn of a transaction already ended the same way succeeds; the
  other way, or with no transaction open, is INVALID_TXN_STATE.
- v2+: PRODUCER_FENCED (KIP-588); before, INVALID_PRODUCER_EPOCH. v3+: flexible.
"""

from __future__ import annotations

import datetime

from kio.schema.end_txn import v0, v1, v2, v3
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.txn.state import for_version

API_KEY = 26
MIN_VERSION = 0
MAX_VERSION = 3

Request = v0.EndTxnRequest | v1.EndTxnRequest | v2.EndTxnRequest | v3.EndTxnRequest
Response = v0.EndTxnResponse | v1.EndTxnResponse | v2.EndTxnResponse | v3.EndTxnResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    transactions = ctx.broker.transactions
    if transactions is None:
        code = ErrorCode.coordinator_not_available
    else:
        code = await transactions.end_transaction(
            request.transactional_id,
            int(request.producer_id),
            int(request.producer_epoch),
            request.committed,
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=for_version(code, ctx.api_version, 2),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
