"""ListTransactions (key 66): v0-1 (KIP-664; `kafka-transactions.sh list`).

- Every transactional id this coordinator holds, with its producer id and state
  (Kafka's names: Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit,
  CompleteAbort), filtered by state and producer id; a state filter Kafka does
  not know is echoed in unknown_state_filters (Dead and PrepareEpochFence are
  known, and match nothing here).
- v1+: duration_filter (KIP-994): only transactions open at least that many ms.
- In a cluster each broker lists the ids of the `__transaction_state`
  partitions it leads (the admin client asks every broker); before the
  coordinator starts, an empty list.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.list_transactions import v0, v1

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.txn.state import TxnState

API_KEY = 66
MIN_VERSION = 0
MAX_VERSION = 1

Request = v0.ListTransactionsRequest | v1.ListTransactionsRequest
Response = v0.ListTransactionsResponse | v1.ListTransactionsResponse
REPLY: Reply[Response] = Reply(API_KEY)

KNOWN_STATES = frozenset({s.value for s in TxnState} | {"Dead", "PrepareEpochFence"})


async def handle(ctx: RequestContext, request: Request) -> Response:
    states = frozenset(request.state_filters)
    duration = (
        int(request.duration_filter) if isinstance(request, v1.ListTransactionsRequest) else -1
    )
    transactions = ctx.broker.transactions
    listed = (
        []
        if transactions is None
        else transactions.listed(states, frozenset(map(int, request.producer_id_filters)), duration)
    )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        unknown_state_filters=tuple(sorted(states - KNOWN_STATES)),
        transaction_states=tuple(
            ctx.make(
                "TransactionState",
                transactional_id=meta.transactional_id,
                producer_id=meta.producer_id,
                transaction_state=meta.state.value,
            )
            for meta in sorted(listed, key=lambda m: m.transactional_id)
        ),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
