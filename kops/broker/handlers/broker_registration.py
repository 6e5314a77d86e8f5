"""BrokerRegistration (key 62): v0. A broker of the cluster announces itself.

Answered by the active controller (the quorum leader, once its epoch has
committed) with the broker's epoch, after the registration has committed to
``__cluster_metadata``; everyone else answers NOT_CONTROLLER. A request for
another cluster id gets INCONSISTENT_CLUSTER_ID. The first listener is the
broker's address (kops brokers have one); features and rack are not kept (v0
has no finalized features to check).
"""

from __future__ import annotations

import datetime

from kio.schema.broker_registration import v0
from kio.schema.errors import ErrorCode

from kops.broker.cluster.controller import ControllerError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 62

Request = v0.BrokerRegistrationRequest
Response = v0.BrokerRegistrationResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    def answer(code: ErrorCode, epoch: int = -1) -> Response:
        return REPLY(ctx, throttle_time=datetime.timedelta(0), error_code=code, broker_epoch=epoch)

    cluster = ctx.broker.cluster
    if cluster is None:
        return answer(ErrorCode.not_controller)
    if request.cluster_id != cluster.quorum.cluster_id:
        return answer(ErrorCode.inconsistent_cluster_id)
    if not request.listeners or request.incarnation_id is None:
        return answer(ErrorCode.invalid_request)
    listener = request.listeners[0]
    try:
        epoch = await cluster.register(
            request.broker_id, str(request.incarnation_id), listener.host, int(listener.port)
        )
    except ControllerError as exc:
        return answer(exc.error_code)
    return answer(ErrorCode.none, epoch)


API = ApiHandler(API_KEY, 0, 0, handle)
