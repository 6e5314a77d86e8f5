"""WriteTxnMarkers (key 27): v1-2. A transaction coordinator ends a transaction here.

- Sent by the coordinator of a transactional id (kops.broker.txn) to the leader
  of each partition the transaction touched that it does not lead itself; kops
  sends v1, as Kafka 3.x's coordinator does (kio has no v0, which is not
  flexible and Kafka 4 dropped).
- For each marker, each partition: this broker must lead it (else
  NOT_LEADER_OR_FOLLOWER, or UNKNOWN_TOPIC_OR_PARTITION for one that does not
  exist); the COMMIT or ABORT control batch is appended and the answer waits
  until the ISR has it, as acks=all (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND
  otherwise: the coordinator sends the marker again). A marker older than the
  producer's epoch there is INVALID_PRODUCER_EPOCH. In a `__consumer_offsets`
  partition the marker also commits or drops the producer's pending
  transactional offsets (kops.broker.txn.marker_io.write_here).
- The coordinator epoch is written into the marker but not checked against an
  earlier one (Kafka's TRANSACTION_COORDINATOR_FENCED is never answered): a
  coordinator stops sending as soon as it learns it lost its partition.
- v2 (KIP-890's transaction_version) is accepted, the version ignored: kops's
  markers are the same under either.
"""

from __future__ import annotations

import asyncio

from kio.schema.write_txn_markers import v1, v2

from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.txn.marker_io import write_here

API_KEY = 27
MIN_VERSION = 1
MAX_VERSION = 2

Request = v1.WriteTxnMarkersRequest | v2.WriteTxnMarkersRequest
Response = v1.WriteTxnMarkersResponse | v2.WriteTxnMarkersResponse
REPLY: Reply[Response] = Reply(API_KEY)
Marker = v1.request.WritableTxnMarker | v2.request.WritableTxnMarker


async def handle(ctx: RequestContext, request: Request) -> Response:
    markers: tuple[Marker, ...] = request.markers
    answers = await asyncio.gather(
        *(
            write_here(
                ctx.broker,
                int(marker.producer_id),
                int(marker.producer_epoch),
                marker.transaction_result,
                int(marker.coordinator_epoch),
                [(t.name, int(p)) for t in marker.topics for p in t.partition_indexes],
            )
            for marker in markers
        )
    )
    return REPLY(
        ctx,
        markers=tuple(
            ctx.make(
                "WritableTxnMarkerResult",
                producer_id=marker.producer_id,
                topics=tuple(
                    ctx.make(
                        "WritableTxnMarkerTopicResult",
                        name=t.name,
                        partitions=tuple(
                            ctx.make(
                                "WritableTxnMarkerPartitionResult",
                                partition_index=p,
                                error_code=codes[(t.name, int(p))],
                            )
                            for p in t.partition_indexes
                        ),
                    )
                    for t in marker.topics
                ),
            )
            for marker, codes in zip(markers, answers, strict=True)
        ),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
