"""InitProducerId (key 22): v0-4.

- Without a transactional id (an idempotent producer): a new producer id with
  epoch 0 per call. Ids are reserved in blocks on disk so they are never reused
  after a restart.
- With one: the transaction coordinator's answer (kops.broker.txn): the id's
  producer id with its epoch bumped, fencing any older producer of the same
  transactional id; an open transaction of the id is aborted first and the client
  gets CONCURRENT_TRANSACTIONS until the abort is written. A timeout above
  transaction.max.timeout.ms gets INVALID_TRANSACTION_TIMEOUT.
- With kops.transactions.enable=false a transactional id is refused as Kafka
  refuses one its ACLs deny (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, fatal).
- In a cluster the request must reach the id's coordinator, the leader of its
  `__transaction_state` partition (FindCoordinator key_type 1); another broker
  answers NOT_COORDINATOR and the client looks it up again. The id's producer
  id and epoch are in that partition, so they survive the coordinator's move.
- v2+: flexible. v3+: producer_id/producer_epoch the client holds (KIP-360); a
  mismatch is PRODUCER_FENCED. v4+: PRODUCER_FENCED (KIP-588); before, it is
  INVALID_PRODUCER_EPOCH.
"""

from __future__ import annotations

import datetime
import logging

from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id import v0, v1, v2, v3, v4

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.txn.state import for_version

API_KEY = 22
MIN_VERSION = 0
MAX_VERSION = 4

Request = (
    v0.InitProducerIdRequest
    | v1.InitProducerIdRequest
    | v2.InitProducerIdRequest
    | v3.InitProducerIdRequest
    | v4.InitProducerIdRequest
)
Response = (
    v0.InitProducerIdResponse
    | v1.InitProducerIdResponse
    | v2.InitProducerIdResponse
    | v3.InitProducerIdResponse
    | v4.InitProducerIdResponse
)
REPLY: Reply[Response] = Reply(API_KEY)
WITH_PRODUCER = (v3.InitProducerIdRequest, v4.InitProducerIdRequest)

log = logging.getLogger("kops.broker.producers")


async def handle(ctx: RequestContext, request: Request) -> Response:
    if request.transactional_id is None:
        code, producer_id, epoch = ErrorCode.none, ctx.broker.allocate_producer_id(), 0
    elif not ctx.broker.config.bool("kops.transactions.enable"):
        log.warning(
            "refusing transactional producer %r: kops.transactions.enable is false",
            request.transactional_id,
        )
        code, producer_id, epoch = ErrorCode.transactional_id_authorization_failed, -1, -1
    elif (transactions := ctx.broker.transactions) is None:
        code, producer_id, epoch = ErrorCode.coordinator_not_available, -1, -1
    else:
        expected = (
            (int(request.producer_id), int(request.producer_epoch))
            if isinstance(request, WITH_PRODUCER)
            else (-1, -1)
        )
        timeout_ms = int(request.transaction_timeout.total_seconds() * 1000)
        code, producer_id, epoch = await transactions.init_producer_id(
            request.transactional_id, timeout_ms, expected
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=for_version(code, ctx.api_version, 4),
        producer_id=producer_id,
        producer_epoch=epoch,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
