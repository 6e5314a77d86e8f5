"""InitProducerId (key 22): v0-1.

- Idempotent producers only: a new producer id with epoch 0 per call. Ids are
  reserved in blocks on disk so they are never reused after a restart.
- A transactional id is refused (kops has no transaction coordinator).
"""

from __future__ import annotations

import datetime
import logging

from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id import v0, v1

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 22
MIN_VERSION = 0
MAX_VERSION = 1

Request = v0.InitProducerIdRequest | v1.InitProducerIdRequest
Response = v0.InitProducerIdResponse | v1.InitProducerIdResponse
REPLY: Reply[Response] = Reply(API_KEY)

log = logging.getLogger("kops.broker.producers")


async def handle(ctx: RequestContext, request: Request) -> Response:
    if request.transactional_id is not None:
        log.warning(
            "refusing transactional producer %r: transactions are not supported",
            request.transactional_id,
        )
        return REPLY(
            ctx,
            throttle_time=datetime.timedelta(0),
            error_code=ErrorCode.transactional_id_authorization_failed,
            producer_id=-1,
            producer_epoch=-1,
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        producer_id=ctx.broker.allocate_producer_id(),
        producer_epoch=0,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
