"""DescribeTransactions (key 65): v0 (KIP-664; `kafka-transactions.sh describe`).

- Per transactional id: state, timeout, start time, producer id and epoch, and
  the partitions of the open transaction. An id whose `__transaction_state`
  partition another broker leads gets NOT_COORDINATOR (the admin client asks
  the id's coordinator); one the coordinator does not hold,
  TRANSACTIONAL_ID_NOT_FOUND; before the coordinator starts,
  COORDINATOR_NOT_AVAILABLE.
- A transaction that has not started has start time 0 (the epoch): Kafka sends
  -1, which the schema's timestamp type cannot carry.
"""

from __future__ import annotations

import datetime
from itertools import groupby

from kio.schema.describe_transactions import v0
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 65
MIN_VERSION = 0
MAX_VERSION = 0

Request = v0.DescribeTransactionsRequest
Response = v0.DescribeTransactionsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    transactions = ctx.broker.transactions
    states = []
    for transactional_id in request.transactional_ids:
        meta = transactions.txns.get(transactional_id) if transactions is not None else None
        code = (
            ErrorCode.coordinator_not_available
            if transactions is None
            else ErrorCode.not_coordinator
            if not transactions.owns(transactional_id)
            else ErrorCode.none
            if meta is not None
            else ErrorCode.transactional_id_not_found
        )
        start_ms = meta.start_ms if meta is not None and meta.start_ms >= 0 else 0
        topics = (
            tuple(
                ctx.make("TopicData", topic=topic, partitions=tuple(p for _, p in group))
                for topic, group in groupby(sorted(meta.partitions), key=lambda tp: tp[0])
            )
            if meta is not None
            else ()
        )
        states.append(
            ctx.make(
                "TransactionState",
                error_code=code,
                transactional_id=transactional_id,
                transaction_state=meta.state.value if meta is not None else "",
                transaction_timeout=datetime.timedelta(
                    milliseconds=meta.timeout_ms if meta is not None else 0
                ),
                transaction_start_time=datetime.datetime.fromtimestamp(
                    start_ms / 1000, tz=datetime.UTC
                ),
                producer_id=meta.producer_id if meta is not None else -1,
                producer_epoch=meta.producer_epoch if meta is not None else -1,
                topics=topics,
            )
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), transaction_states=tuple(states))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
