"""DescribeConfigs (key 32): v1-4.

- Topic resources (type 2) report every topic setting; values set on the
  topic have source DYNAMIC_TOPIC_CONFIG (1), the rest DEFAULT_CONFIG (5).
- Broker resources (type 4) report the broker's settings as STATIC (4).
- v3+: config_type and documentation are left at their defaults.
"""

from __future__ import annotations

import datetime

from kio.schema.describe_configs import v1, v2, v3, v4
from kio.schema.errors import ErrorCode

from kops.broker.cluster.metadata import TopicError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 32
MIN_VERSION = 1
MAX_VERSION = 4

Request = (
    v1.DescribeConfigsRequest
    | v2.DescribeConfigsRequest
    | v3.DescribeConfigsRequest
    | v4.DescribeConfigsRequest
)
Response = (
    v1.DescribeConfigsResponse
    | v2.DescribeConfigsResponse
    | v3.DescribeConfigsResponse
    | v4.DescribeConfigsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
SOURCE_TOPIC = 1
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5


async def handle(ctx: RequestContext, request: Request) -> Response:
    results = []
    for resource in request.resources:
        code, message, entries = ErrorCode.none, None, []
        try:
            if resource.resource_type == TOPIC_RESOURCE:
                values = ctx.broker.topic_configs(resource.resource_name)
                entries = [
                    (key, value, SOURCE_DEFAULT if is_default else SOURCE_TOPIC, is_default)
                    for key, (value, is_default) in sorted(values.items())
                ]
            elif resource.resource_type == BROKER_RESOURCE:
                entries = [
                    (key, value, SOURCE_STATIC_BROKER, False)
                    for key, value in sorted(ctx.broker.config.items().items())
                ]
            else:
                code, message = (
                    ErrorCode.invalid_request,
                    f"unsupported resource type {resource.resource_type}",
                )
        except TopicError as exc:
            code, message = exc.error_code, exc.message
        wanted = set(resource.configuration_keys or ())
        configs = tuple(
            ctx.make(
                "DescribeConfigsResourceResult",
                name=key,
                value=value,
                read_only=False,
                config_source=source,
                is_default=is_default,
                is_sensitive=False,
                synonyms=(),
                documentation=None,
            )
            for key, value, source, is_default in entries
            if not wanted or key in wanted
        )
        results.append(
            ctx.make(
                "DescribeConfigsResult",
                error_code=code,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
                configs=configs,
            )
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), results=tuple(results))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
