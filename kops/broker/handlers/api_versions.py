"""ApiVersions (key 18): v0-3.

- Always answered with response header v0 (see kops.protocol.messages).
- A version outside the range gets a v0 body with UNSUPPORTED_VERSION and
  key 18's own range, so the client retries with a version we speak.
- The advertised table is the dispatch table itself.
- v3: client software name/version are accepted without validation.
"""

from __future__ import annotations

import datetime

from kio.schema.api_versions.v0.response import ApiVersion as ApiVersionV0
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsResponseV0
from kio.schema.errors import ErrorCode

from kops.broker.handlers import RequestContext

API_KEY = 18
MIN_VERSION = 0
MAX_VERSION = 3


async def handle(ctx: RequestContext, request: object) -> object:
    from kops.broker.dispatch import api_table

    entries = tuple(
        ctx.make(
            "ApiVersion", api_key=api.key, min_version=api.min_version, max_version=api.max_version
        )
        for api in api_table().values()
    )
    return ctx.make(
        "ApiVersionsResponse",
        error_code=ErrorCode.none,
        api_keys=entries,
        throttle_time=datetime.timedelta(0),
        supported_features=(),
        finalized_features_epoch=-1,
        finalized_features=(),
        zk_migration_ready=False,
    )


def unsupported_version_reply() -> object:
    return ApiVersionsResponseV0(
        error_code=ErrorCode.unsupported_version,
        api_keys=(ApiVersionV0(api_key=API_KEY, min_version=MIN_VERSION, max_version=MAX_VERSION),),
    )
