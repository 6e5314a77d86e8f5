"""Connections from this broker to the others, one per broker id (replica fetching,
transaction markers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kops.broker.aio import cancel_and_wait
from kops.protocol.async_client import AsyncBrokerClient

__all__ = ["PeerClients"]


class PeerClients:
    """An :class:`AsyncBrokerClient` per broker id, at the address ``endpoint`` gives now.

    A broker that came back at another address gets a new client; the old one is closed
    in the background (kept referenced until it is, and awaited by :meth:`close`)."""

    def __init__(self, endpoint: Callable[[int], tuple[str, int] | None], client_id: str) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        self._clients: dict[int, AsyncBrokerClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, broker_id: int) -> AsyncBrokerClient | None:
        """The client for ``broker_id``; None while its address is unknown."""
        address = self._endpoint(broker_id)
        if address is None:
            return None
        client = self._clients.get(broker_id)
        if client is not None and (client.host, client.port) != address:
            # The broker came back elsewhere: the old connection is no use.
            task = asyncio.get_running_loop().create_task(client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            client = None
        if client is None:
            client = AsyncBrokerClient(
                *address, client_id=self._client_id, connect_timeout=1.0, backoff_max=0.2
            )
            self._clients[broker_id] = client
        return client

    async def close(self) -> None:
        await cancel_and_wait(list(self._closing))
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
