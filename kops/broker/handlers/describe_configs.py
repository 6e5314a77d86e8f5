"""DescribeConfigs (key 32): v1-4.

- Topic resources (type 2) report every topic config Kafka defines (the
  catalogue in kops.broker.topic_configs). Source: TOPIC_CONFIG (1) when set on
  the topic, STATIC_BROKER_CONFIG (4) when the default comes from a broker
  setting the operator gave, DEFAULT_CONFIG (5) otherwise. Topic configs are
  never read-only or sensitive.
- Broker resources (type 4): this broker's settings with their source,
  DYNAMIC_BROKER_CONFIG (2), DYNAMIC_DEFAULT_BROKER_CONFIG (3), STATIC (4) or
  DEFAULT (5); read_only unless the setting is dynamic. The resource "" (the
  cluster-wide default) reports only the dynamic defaults, as Kafka does.
- include_synonyms (v1+): the topic's override, the broker settings given, and
  the default, highest priority first.
- v3+: config_type from the catalogue; with include_documentation, a short
  doc, which for configs kops stores but does not act on says so.
"""

from __future__ import annotations

import datetime

from kio.schema.describe_configs import v1, v2, v3, v4
from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.config import SOURCE_DYNAMIC_DEFAULT_BROKER, BrokerConfig
from kops.broker.dynamic_config import is_dynamic
from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.topic_configs import CATALOGUE

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
UNKNOWN_TYPE = 0

# (name, value, source, synonyms as (name, value, source), config type, documentation)
Entry = tuple[str, str, int, list[tuple[str, str, int]], int, str | None]


async def handle(ctx: RequestContext, request: Request) -> Response:
    synonyms_wanted = request.include_synonyms
    docs_wanted = bool(getattr(request, "include_documentation", False))
    results = []
    for resource in request.resources:
        code, message, entries = ErrorCode.none, None, list[Entry]()
        try:
            if resource.resource_type == TOPIC_RESOURCE:
                values = ctx.broker.topic_configs(resource.resource_name)
                entries = [
                    _topic_entry(ctx.broker.config, key, value, is_default)
                    for key, (value, is_default) in sorted(values.items())
                ]
            elif resource.resource_type == BROKER_RESOURCE and resource.resource_name == "":
                entries = [
                    (key, value, SOURCE_DYNAMIC_DEFAULT_BROKER, [], UNKNOWN_TYPE, None)
                    for key, value in sorted(ctx.broker.dynamic_configs.cluster_default.items())
                ]
            elif resource.resource_type == BROKER_RESOURCE:
                config = ctx.broker.config
                entries = [
                    (key, value, config.source(key), [], UNKNOWN_TYPE, None)
                    for key, value in sorted(config.items().items())
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
                read_only=resource.resource_type == BROKER_RESOURCE and not is_dynamic(key),
                config_source=source,
                is_default=source == SOURCE_DEFAULT,
                is_sensitive=False,
                synonyms=tuple(
                    ctx.make("DescribeConfigsSynonym", name=n, value=v, source=s)
                    for n, v, s in (synonyms if synonyms_wanted else ())
                ),
                config_type=config_type,
                documentation=doc if docs_wanted else None,
            )
            for key, value, source, synonyms, config_type, doc in entries
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


def _topic_entry(config: BrokerConfig, key: str, value: str, is_default: bool) -> Entry:
    definition = CATALOGUE.get(key)
    if definition is None:  # not a Kafka topic config: described as it is stored
        return key, value, SOURCE_TOPIC, [], UNKNOWN_TYPE, None
    synonyms: list[tuple[str, str, int]] = []
    if not is_default:
        synonyms.append((key, value, SOURCE_TOPIC))
    for name in definition.synonyms:
        if config.is_set(name):
            synonyms.append((name, config.get(name) or "", config.source(name)))
    primary = definition.synonyms[0] if definition.synonyms else key
    synonyms.append((primary, definition.default, SOURCE_DEFAULT))
    if not is_default:
        source = SOURCE_TOPIC
    elif (origin := config.topic_default_origin(key)) is not None:
        source = config.source(origin)
    else:
        source = SOURCE_DEFAULT
    return key, value, source, synonyms, int(definition.type), definition.documentation


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
