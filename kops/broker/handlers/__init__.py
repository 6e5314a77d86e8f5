"""One module per Kafka API. Each module defines API_KEY, MIN_VERSION,
MAX_VERSION and `async def handle(ctx, request)`, and opens with version notes."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kops.protocol.messages import build, response_module

if TYPE_CHECKING:
    from kops.broker.broker import Broker
    from kops.broker.server import Peer


@dataclass(slots=True)
class RequestContext:
    broker: Broker
    api_key: int
    api_version: int
    client_id: str | None
    peer: Peer

    @property
    def schema(self) -> ModuleType:
        """The kio module of this request's response version (nested classes live there)."""
        return response_module(self.api_key, self.api_version)

    def make(self, class_name: str, **values: Any) -> Any:
        """Build a response entity of this version, ignoring fields it lacks."""
        return build(getattr(self.schema, class_name), **values)
