"""BrokerHeartbeat (key 63): v0. A registered broker says it is alive.

Answered by the active controller; everyone else answers NOT_CONTROLLER. An
unknown broker or a stale broker epoch gets STALE_BROKER_EPOCH (the broker
registers again). ``current_metadata_offset`` is the last metadata offset the
broker has applied: once it reaches the broker's registration, the controller
unfences it (is_caught_up, is_fenced false). want_shut_down is a controlled
shutdown: leadership moves off the broker first, then should_shut_down.
want_fence is ignored (Kafka's brokers send it only to stay fenced while their
logs load). The connection a heartbeat came on is remembered: when it closes,
the broker has two heartbeat intervals to heartbeat again before it is fenced
(its process died and the kernel closed it; a live broker reconnects), instead
of a whole broker.session.timeout.ms.
"""

from __future__ import annotations

import datetime

from kio.schema.broker_heartbeat import v0
from kio.schema.errors import ErrorCode

from kops.broker.cluster.controller import ControllerError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 63

Request = v0.BrokerHeartbeatRequest
Response = v0.BrokerHeartbeatResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    def answer(
        code: ErrorCode, caught_up: bool = False, fenced: bool = True, shut_down: bool = False
    ) -> Response:
        return REPLY(
            ctx,
            throttle_time=datetime.timedelta(0),
            error_code=code,
            is_caught_up=caught_up,
            is_fenced=fenced,
            should_shut_down=shut_down,
        )

    cluster = ctx.broker.cluster
    if cluster is None:
        return answer(ErrorCode.not_controller)
    try:
        outcome = await cluster.heartbeat(
            request.broker_id,
            request.broker_epoch,
            request.current_metadata_offset,
            request.want_shut_down,
            connection=ctx.peer,
        )
    except ControllerError as exc:
        return answer(exc.error_code)
    return answer(outcome.error, outcome.is_caught_up, outcome.is_fenced, outcome.should_shut_down)


API = ApiHandler(API_KEY, 0, 0, handle)
