"""DescribeLogDirs (key 35): v1-3.

- One log dir: the broker's data directory. A null topic list means every
  topic; partition_size is the bytes of the partition's segment files.
- offset_lag is always 0 and is_future_key false (no replica movement).
- v3: top-level error_code.
"""

from __future__ import annotations

import datetime

from kio.schema.describe_log_dirs import v1, v2, v3
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 35
MIN_VERSION = 1
MAX_VERSION = 3

Request = v1.DescribeLogDirsRequest | v2.DescribeLogDirsRequest | v3.DescribeLogDirsRequest
Response = v1.DescribeLogDirsResponse | v2.DescribeLogDirsResponse | v3.DescribeLogDirsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    broker = ctx.broker
    if request.topics is None:
        wanted = dict.fromkeys(broker.topic_names())
    else:
        wanted = {t.topic: set(t.partitions) for t in request.topics}
    topics = []
    for name, partitions in wanted.items():
        entries = tuple(
            ctx.make(
                "DescribeLogDirsPartition",
                partition_index=p.index,
                partition_size=p.size_bytes,
                offset_lag=0,
                is_future_key=False,
            )
            for p in broker.partitions_of(name)
            if partitions is None or p.index in partitions
        )
        if entries:
            topics.append(ctx.make("DescribeLogDirsTopic", name=name, partitions=entries))
    result = ctx.make(
        "DescribeLogDirsResult",
        error_code=ErrorCode.none,
        log_dir=str(broker.data_dir.resolve()),
        topics=tuple(topics),
        total_bytes=-1,
        usable_bytes=-1,
    )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        results=(result,),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
