"""ListGroups (key 16): v0-5.

- Every group the coordinator knows, including groups that only hold offsets
  (Empty, protocol type "").
- v1+: throttle_time. v4+: states_filter (state names in any case, as Kafka
  matches them) and each group's state.
- v5+: types_filter (group types in any case) and each group's group_type.
  kops runs classic groups only: "classic" lists them, a filter naming only
  other types ("consumer", "share", ...) lists none.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.list_groups import v0, v1, v2, v3, v4, v5

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 16
MIN_VERSION = 0
MAX_VERSION = 5

Request = (
    v0.ListGroupsRequest
    | v1.ListGroupsRequest
    | v2.ListGroupsRequest
    | v3.ListGroupsRequest
    | v4.ListGroupsRequest
    | v5.ListGroupsRequest
)
Response = (
    v0.ListGroupsResponse
    | v1.ListGroupsResponse
    | v2.ListGroupsResponse
    | v3.ListGroupsResponse
    | v4.ListGroupsResponse
    | v5.ListGroupsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)
WITH_STATES = (v4.ListGroupsRequest, v5.ListGroupsRequest)


async def handle(ctx: RequestContext, request: Request) -> Response:
    coordinator = ctx.broker.coordinator()
    states = request.states_filter if isinstance(request, WITH_STATES) else ()
    types = request.types_filter if isinstance(request, v5.ListGroupsRequest) else ()
    listed: list[tuple[str, str, str, str]] = []
    if coordinator is None:
        error = ErrorCode.coordinator_not_available
    else:
        error, listed = coordinator.list_groups(states, types)
    groups = tuple(
        ctx.make(
            "ListedGroup",
            group_id=gid,
            protocol_type=ptype,
            group_state=state,
            group_type=gtype,
        )
        for gid, ptype, state, gtype in listed
    )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), error_code=error, groups=groups)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
