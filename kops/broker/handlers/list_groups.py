"""ListGroups (key 16): v0-4.

- Every group the coordinator knows, including groups that only hold offsets
  (Empty, protocol type "").
- v1+: throttle_time. v4+: states_filter (case-insensitive state names) and
  each group's state.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.list_groups import v0, v1, v2, v3, v4

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 16
MIN_VERSION = 0
MAX_VERSION = 4

Request = (
    v0.ListGroupsRequest
    | v1.ListGroupsRequest
    | v2.ListGroupsRequest
    | v3.ListGroupsRequest
    | v4.ListGroupsRequest
)
Response = (
    v0.ListGroupsResponse
    | v1.ListGroupsResponse
    | v2.ListGroupsResponse
    | v3.ListGroupsResponse
    | v4.ListGroupsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    coordinator = ctx.broker.coordinator()
    states = None
    if isinstance(request, v4.ListGroupsRequest):
        states = {s.lower() for s in request.states_filter} or None
    listed: list[tuple[str, str, str]] = []
    if coordinator is None:
        error = ErrorCode.coordinator_not_available
    else:
        error, listed = coordinator.list_groups(states)
    groups = tuple(
        ctx.make("ListedGroup", group_id=gid, protocol_type=ptype, group_state=state)
        for gid, ptype, state in listed
    )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), error_code=error, groups=groups)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
