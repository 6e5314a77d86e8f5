"""ApiVersions (key 18): v0-3.

- Always answered with response header v0 (see kops.protocol.messages).
- A version outside the range gets a v0 body with UNSUPPORTED_VERSION and
  key 18's own range, so the client retries with a version we speak.
- The advertised table is the dispatch table itself.
- v3: client software name/version are accepted without validation.
"""

from __future__ import annotations

import datetime

from kio.schema.api_versions import v0, v1, v2, v3
from kio.schema.api_versions.v0.response import ApiVersion as ApiVersionV0
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsResponseV0
from kio.schema.errors import ErrorCode
from kio.static.primitive import i16

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 18
MIN_VERSION = 0
MAX_VERSION = 3

Request = (
    v0.ApiVersionsRequest | v1.ApiVersionsRequest | v2.ApiVersionsRequest | v3.ApiVersionsRequest
)
Response = (
    v0.ApiVersionsResponse
    | v1.ApiVersionsResponse
    | v2.ApiVersionsResponse
    | v3.ApiVersionsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    entries = tuple(
        ctx.make(
            "ApiVersion", api_key=api.key, min_version=api.min_version, max_version=api.max_version
        )
        for api in ctx.apis.values()
    )
    return REPLY(
        ctx,
        error_code=ErrorCode.none,
        api_keys=entries,
        throttle_time=datetime.timedelta(0),
        supported_features=(),
        finalized_features_epoch=-1,
        finalized_features=(),
        zk_migration_ready=False,
    )


def unsupported_version_reply() -> ApiVersionsResponseV0:
    return ApiVersionsResponseV0(
        error_code=ErrorCode.unsupported_version,
        api_keys=(
            ApiVersionV0(
                api_key=i16(API_KEY), min_version=i16(MIN_VERSION), max_version=i16(MAX_VERSION)
            ),
        ),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
