"""The API table: which handler serves which key and versions.

ApiVersions answers from this same table, so advertising and serving can
never disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

from kops.broker.handlers import RequestContext
from kops.broker.server import FrameError, Peer
from kops.protocol.messages import (
    API_VERSIONS_KEY,
    MalformedRequestError,
    UnsupportedVersionError,
    decode_request,
    encode_response,
    peek_key_version,
)

if TYPE_CHECKING:
    from kops.broker.broker import Broker

log = logging.getLogger("kops.broker.dispatch")


@dataclass(frozen=True, slots=True)
class Api:
    key: int
    min_version: int
    max_version: int
    module: ModuleType


def _handler_modules() -> list[ModuleType]:
    from kops.broker.handlers import (
        api_versions,
        create_partitions,
        create_topics,
        delete_records,
        delete_topics,
        describe_cluster,
        describe_configs,
        describe_log_dirs,
        fetch,
        incremental_alter_configs,
        init_producer_id,
        list_offsets,
        metadata,
        offset_for_leader_epoch,
        produce,
    )

    modules = [
        produce,
        fetch,
        list_offsets,
        metadata,
        api_versions,
        create_topics,
        delete_topics,
        init_producer_id,
        offset_for_leader_epoch,
        describe_configs,
        delete_records,
        create_partitions,
        incremental_alter_configs,
        describe_cluster,
        describe_log_dirs,
    ]
    from kops.broker.groups import handler_modules as group_handler_modules

    modules.extend(group_handler_modules())
    return modules


@cache
def api_table() -> dict[int, Api]:
    table: dict[int, Api] = {}
    for module in _handler_modules():
        key = module.API_KEY
        if key in table:
            raise RuntimeError(f"api key {key} registered twice")
        table[key] = Api(key, module.MIN_VERSION, module.MAX_VERSION, module)
    return dict(sorted(table.items()))


class Dispatcher:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.table = api_table()

    async def handle_frame(self, frame: bytes, peer: Peer) -> list[bytes | bytearray] | None:
        api_key, api_version, correlation_id = _peek(frame)
        api = self.table.get(api_key)
        if api is None:
            raise FrameError(f"unsupported api key {api_key}")
        if api_key == API_VERSIONS_KEY and not api.min_version <= api_version <= api.max_version:
            from kops.broker.handlers import api_versions

            return encode_response(correlation_id, api_versions.unsupported_version_reply())
        if not api.min_version <= api_version <= api.max_version:
            raise FrameError(f"api {api_key} v{api_version} is outside the advertised range")
        try:
            request = decode_request(frame)
        except (MalformedRequestError, UnsupportedVersionError) as exc:
            raise FrameError(str(exc)) from None
        ctx = RequestContext(self.broker, api_key, api_version, request.client_id, peer)
        response = await api.module.handle(ctx, request.body)
        if response is None:
            return None
        return encode_response(correlation_id, response)


def _peek(frame: bytes) -> tuple[int, int, int]:
    try:
        return peek_key_version(frame)
    except MalformedRequestError as exc:
        raise FrameError(str(exc)) from None
