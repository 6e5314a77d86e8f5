"""FindCoordinator (key 10): v0-2.

- key_type 0 (group): the coordinator is the leader of partition
  abs(javaStringHashCode(key)) % N of `__consumer_offsets`, as in Kafka; on a
  single broker that leader is this broker. In a cluster it is whichever broker
  the metadata names, and the topic is created on first use (the client gets
  COORDINATOR_NOT_AVAILABLE and asks again meanwhile).
- key_type 1 (transaction): the leader of partition
  abs(javaStringHashCode(key)) % N of `__transaction_state`, created on first
  use as `__consumer_offsets` is (kops.broker.coordinators); on a single broker,
  this broker.
- v1+: key_type, throttle_time, error_message.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator import v0, v1, v2

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 10
MIN_VERSION = 0
MAX_VERSION = 2

Request = v0.FindCoordinatorRequest | v1.FindCoordinatorRequest | v2.FindCoordinatorRequest
Response = v0.FindCoordinatorResponse | v1.FindCoordinatorResponse | v2.FindCoordinatorResponse
REPLY: Reply[Response] = Reply(API_KEY)

GROUP, TRANSACTION = 0, 1


async def handle(ctx: RequestContext, request: Request) -> Response:
    key_type = GROUP if isinstance(request, v0.FindCoordinatorRequest) else request.key_type
    code, message, node, host, port = ErrorCode.none, None, -1, "", -1
    if key_type not in (GROUP, TRANSACTION):
        code, message = ErrorCode.invalid_request, f"unknown key type {key_type}"
    else:
        found = (
            ctx.broker.group_coordinator(request.key)
            if key_type == GROUP
            else ctx.broker.transaction_coordinator(request.key)
        )
        if isinstance(found, ErrorCode):
            code = found
        else:
            node, host, port = found.node_id, found.host, found.port
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=code,
        error_message=message,
        node_id=node,
        host=host,
        port=port,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
