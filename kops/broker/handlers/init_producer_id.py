"""InitProducerId (key 22): v0-1.

- Idempotent producers only: a new producer id with epoch 0 per call. Ids are
  reserved in blocks on disk so they are never reused after a restart.
- A transactional id is refused (kops has no transaction coordinator).
"""

from __future__ import annotations

import datetime
import logging

from kio.schema.errors import ErrorCode

from kops.broker.handlers import RequestContext

API_KEY = 22
MIN_VERSION = 0
MAX_VERSION = 1

log = logging.getLogger("kops.broker.producers")


async def handle(ctx: RequestContext, request: object) -> object:
    if request.transactional_id is not None:
        log.warning(
            "refusing transactional producer %r: transactions are not supported",
            request.transactional_id,
        )
        return ctx.make(
            "InitProducerIdResponse",
            throttle_time=datetime.timedelta(0),
            error_code=ErrorCode.transactional_id_authorization_failed,
            producer_id=-1,
            producer_epoch=-1,
        )
    return ctx.make(
        "InitProducerIdResponse",
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        producer_id=ctx.broker.allocate_producer_id(),
        producer_epoch=0,
    )
