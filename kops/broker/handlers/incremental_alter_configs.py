"""IncrementalAlterConfigs (key 44): v0-1.

- Topic resources, and broker resources (this broker's id, or "" for the
  cluster-wide default: dynamic broker configs, kops.broker.dynamic_config; a
  read-only setting or another broker's id is INVALID_REQUEST). Operations SET
  (0) and DELETE (1); APPEND and SUBTRACT (2, 3) apply to list settings such as
  cleanup.policy.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs import v0, v1
from kio.schema.incremental_alter_configs.v0.request import AlterableConfig as AlterableConfigV0
from kio.schema.incremental_alter_configs.v1.request import AlterableConfig as AlterableConfigV1

from kops.broker.cluster.topics import TopicError
from kops.broker.dynamic_config import DynamicConfigError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 44
MIN_VERSION = 0
MAX_VERSION = 1

Request = v0.IncrementalAlterConfigsRequest | v1.IncrementalAlterConfigsRequest
Response = v0.IncrementalAlterConfigsResponse | v1.IncrementalAlterConfigsResponse
REPLY: Reply[Response] = Reply(API_KEY)
AlterableConfig = AlterableConfigV0 | AlterableConfigV1

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


async def handle(ctx: RequestContext, request: Request) -> Response:
    responses = []
    for resource in request.resources:
        code, message = ErrorCode.none, None
        try:
            if resource.resource_type == BROKER_RESOURCE:
                # APPEND/SUBTRACT start from the dynamic value, else the one in force
                # (Kafka: the persisted dynamic value, else the default).
                dynamic = ctx.broker.dynamic_configs.resource(resource.resource_name)
                current = {
                    c.name: (dynamic.get(c.name) or ctx.broker.config.get(c.name) or "", False)
                    for c in resource.configs
                }
                ctx.broker.alter_broker_configs(
                    resource.resource_name,
                    [_change(c, current) for c in resource.configs],
                    validate_only=request.validate_only,
                )
            elif resource.resource_type == TOPIC_RESOURCE:
                current = ctx.broker.topic_configs(resource.resource_name)
                changes = [_change(c, current) for c in resource.configs]
                await ctx.broker.admin.alter_topic_configs(
                    resource.resource_name, changes, validate_only=request.validate_only
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
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        responses=tuple(responses),
    )


def _change(
    config: AlterableConfig, current: dict[str, tuple[str, bool]]
) -> tuple[str, str | None]:
    operation = config.config_operation
    if operation == SET:
        return config.name, config.value
    if operation == DELETE:
        return config.name, None
    existing = [v for v in current.get(config.name, ("", True))[0].split(",") if v]
    items = [v for v in (config.value or "").split(",") if v]
    if operation == APPEND:
        merged = existing + [v for v in items if v not in existing]
    elif operation == SUBTRACT:
        merged = [v for v in existing if v not in items]
    else:
        raise TopicError(ErrorCode.invalid_request, f"unknown config operation {operation}")
    return config.name, ",".join(merged)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
