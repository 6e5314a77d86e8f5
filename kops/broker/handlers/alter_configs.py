"""AlterConfigs (key 33, the legacy form of IncrementalAlterConfigs): v0-2.

- Topic resources: the request names a topic's whole set of overrides:
  configs it leaves out revert to their defaults, a null value counts as left
  out. Values are checked as at topic creation (INVALID_CONFIG).
- Broker resources (this broker's id, or "" for the cluster-wide default): the
  whole set of dynamic broker configs, likewise (kops.broker.dynamic_config);
  a read-only setting or another broker's id is INVALID_REQUEST.
- A config named twice in one resource: INVALID_REQUEST, nothing changed.
- validate_only checks everything and changes nothing.
- v1 and v2 change nothing but the encoding (v2 is flexible).
"""

from __future__ import annotations

import datetime

from kio.schema.alter_configs import v0, v1, v2
from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.dynamic_config import DynamicConfigError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 33
MIN_VERSION = 0
MAX_VERSION = 2

Request = v0.AlterConfigsRequest | v1.AlterConfigsRequest | v2.AlterConfigsRequest
Response = v0.AlterConfigsResponse | v1.AlterConfigsResponse | v2.AlterConfigsResponse
REPLY: Reply[Response] = Reply(API_KEY)

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4


async def handle(ctx: RequestContext, request: Request) -> Response:
    responses = []
    for resource in request.resources:
        code, message = ErrorCode.none, None
        try:
            names = [c.name for c in resource.configs]
            if len(set(names)) != len(names):
                raise TopicError(ErrorCode.invalid_request, "Error due to duplicate config keys")
            wanted = {c.name: c.value for c in resource.configs if c.value is not None}
            if resource.resource_type == BROKER_RESOURCE:
                ctx.broker.alter_broker_configs(
                    resource.resource_name,
                    wanted.items(),
                    replace=True,
                    validate_only=request.validate_only,
                )
            elif resource.resource_type == TOPIC_RESOURCE:
                await _replace_topic_configs(
                    ctx, resource.resource_name, wanted, request.validate_only
                )
            else:
                raise TopicError(
                    ErrorCode.invalid_request, "only topic and broker configs can be altered"
                )
        except (TopicError, DynamicConfigError) as exc:
            code, message = exc.error_code, exc.message
        responses.append(
            ctx.make(
                "AlterConfigsResourceResponse",
                error_code=code,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
            )
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), responses=tuple(responses))


async def _replace_topic_configs(
    ctx: RequestContext, name: str, wanted: dict[str, str], validate_only: bool
) -> None:
    current = ctx.broker.topic_configs(name)
    dropped = [
        (key, None)
        for key, (_, is_default) in current.items()
        if not is_default and key not in wanted
    ]
    await ctx.broker.admin.alter_topic_configs(
        name, [*dropped, *wanted.items()], validate_only=validate_only
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
