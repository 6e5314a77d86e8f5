"""The API table: which handler serves which key and versions.

ApiVersions answers from this same table, so advertising and serving can
never disagree.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import TYPE_CHECKING, Any

from kops.broker.handlers import (
    ApiHandler,
    ApiRange,
    RequestContext,
    add_offsets_to_txn,
    add_partitions_to_txn,
    alter_configs,
    alter_partition,
    api_versions,
    broker_heartbeat,
    broker_registration,
    create_partitions,
    create_topics,
    delete_groups,
    delete_records,
    delete_topics,
    describe_cluster,
    describe_configs,
    describe_groups,
    describe_log_dirs,
    describe_topic_partitions,
    describe_transactions,
    end_txn,
    fetch,
    find_coordinator,
    heartbeat,
    incremental_alter_configs,
    init_producer_id,
    join_group,
    leave_group,
    list_groups,
    list_offsets,
    list_transactions,
    metadata,
    offset_commit,
    offset_delete,
    offset_fetch,
    offset_for_leader_epoch,
    produce,
    quorum,
    sync_group,
    txn_offset_commit,
    write_txn_markers,
)
from kops.broker.metrics import RequestMetrics
from kops.broker.server import FrameError, Peer
from kops.protocol.messages import (
    API_VERSIONS_KEY,
    MalformedRequestError,
    UnsupportedVersionError,
    decode_request,
    encode_legacy_produce_response,
    encode_response,
    is_legacy_produce,
    peek_key_version,
)

if TYPE_CHECKING:
    from kops.broker.handlers import BrokerApi

__all__ = ["HANDLERS", "Dispatcher", "api_table"]

log = logging.getLogger("kops.broker.dispatch")

# Every API the broker serves, once.
HANDLERS: tuple[ApiHandler[Any], ...] = (
    produce.API,
    fetch.API,
    list_offsets.API,
    metadata.API,
    offset_commit.API,
    offset_fetch.API,
    find_coordinator.API,
    join_group.API,
    heartbeat.API,
    leave_group.API,
    sync_group.API,
    describe_groups.API,
    list_groups.API,
    api_versions.API,
    create_topics.API,
    delete_topics.API,
    delete_records.API,
    init_producer_id.API,
    offset_for_leader_epoch.API,
    add_partitions_to_txn.API,
    add_offsets_to_txn.API,
    end_txn.API,
    write_txn_markers.API,
    txn_offset_commit.API,
    describe_transactions.API,
    list_transactions.API,
    describe_configs.API,
    alter_configs.API,
    create_partitions.API,
    incremental_alter_configs.API,
    delete_groups.API,
    offset_delete.API,
    describe_log_dirs.API,
    describe_cluster.API,
    describe_topic_partitions.API,
    quorum.VOTE,
    quorum.BEGIN_QUORUM_EPOCH,
    quorum.END_QUORUM_EPOCH,
    quorum.DESCRIBE_QUORUM,
    quorum.FETCH_SNAPSHOT,
    alter_partition.API,
    broker_registration.API,
    broker_heartbeat.API,
)


@cache
def api_table() -> dict[int, ApiHandler[Any]]:
    table: dict[int, ApiHandler[Any]] = {}
    for api in HANDLERS:
        if api.key in table:
            raise RuntimeError(f"api key {api.key} registered twice")
        table[api.key] = api
    return dict(sorted(table.items()))


class Dispatcher:
    def __init__(self, broker: BrokerApi, metrics: RequestMetrics | None = None) -> None:
        self.broker = broker
        self.metrics = metrics
        self.table = api_table()
        self.ranges: dict[int, ApiRange] = {key: api.range for key, api in self.table.items()}

    async def handle_frame(self, frame: bytes, peer: Peer) -> list[bytes | bytearray] | None:
        metrics = self.metrics
        api_key = int.from_bytes(frame[:2], "big", signed=True)
        # Unknown keys are not counted: a junk frame must not mint a label.
        if metrics is None or api_key not in self.table:
            return await self._handle_frame(frame, peer)
        started = time.perf_counter()
        try:
            return await self._handle_frame(frame, peer)
        finally:
            # Requests that fail count too, as Kafka counts every request it reads.
            metrics.observe(api_key, time.perf_counter() - started)

    async def _handle_frame(self, frame: bytes, peer: Peer) -> list[bytes | bytearray] | None:
        api_key, api_version, correlation_id = _peek(frame)
        api = self.table.get(api_key)
        if api is None:
            raise FrameError(f"unsupported api key {api_key}")
        if not api.min_version <= api_version <= api.max_version:
            if api_key == API_VERSIONS_KEY:
                return encode_response(correlation_id, api_versions.unsupported_version_reply())
            raise FrameError(f"api {api_key} v{api_version} is outside the advertised range")
        try:
            request = decode_request(frame)
        except (MalformedRequestError, UnsupportedVersionError) as exc:
            raise FrameError(str(exc)) from None
        ctx = RequestContext(
            self.broker, api_key, api_version, request.client_id, peer, self.ranges
        )
        response = await api.handle(ctx, request.body)
        if response is None:
            return None
        if is_legacy_produce(api_key, api_version):
            return encode_legacy_produce_response(correlation_id, response, api_version)
        return encode_response(correlation_id, response)


def _peek(frame: bytes) -> tuple[int, int, int]:
    try:
        return peek_key_version(frame)
    except MalformedRequestError as exc:
        raise FrameError(str(exc)) from None
