"""A broker's side of cluster membership: register with the controller, then heartbeat.

Kafka's BrokerLifecycleManager, on one listener: the broker sends
BrokerRegistration to whichever voter leads the quorum (the active controller)
until it has a broker epoch, then BrokerHeartbeat every
``broker.heartbeat.interval.ms`` with the metadata offset it has applied. The
controller unfences it once that offset reaches its registration, and fences it
when the heartbeats stop for ``broker.session.timeout.ms``; on a clean stop it
asks first (want_shut_down, Kafka's controlled shutdown) and goes once the
controller has fenced it. A controller change
or a lost connection only delays the next beat; STALE_BROKER_EPOCH (the
controller no longer knows this registration) starts over with a new one.
The incarnation id is new per process, so a restart is a new registration.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

from kio.schema.broker_heartbeat import v0 as heartbeat_v0
from kio.schema.broker_registration import v0 as registration_v0
from kio.schema.errors import ErrorCode
from kio.schema.types import BrokerId
from kio.static.primitive import i16, i64, u16

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.quorum import QuorumDriver, peer_clients
from kops.protocol.async_client import AsyncBrokerClient
from kops.protocol.errors import RequestError

__all__ = ["BrokerLifecycle"]

log = logging.getLogger("kops.broker.lifecycle")

# Kafka's SecurityProtocol.PLAINTEXT.
_PLAINTEXT = i16(0)


class BrokerLifecycle:
    def __init__(
        self,
        node_id: int,
        advertised: tuple[str, int],
        voters: Mapping[int, tuple[str, int]],
        quorum: QuorumDriver,
        *,
        heartbeat_interval_ms: int,
    ) -> None:
        self.node_id = node_id
        self.advertised = advertised
        self.incarnation_id = uuid.uuid4()
        self.quorum = quorum
        self.broker_epoch = -1
        self.fenced = True
        self._interval = heartbeat_interval_ms / 1000
        self._timeout = max(1.0, 2 * self._interval)
        self._clients = peer_clients(voters, client_id=f"kops-lifecycle-{node_id}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kops-broker-lifecycle")

    async def stop(self, shutdown_timeout: float = 3.0) -> None:
        """Controlled shutdown, then stop: the controller fences this broker and moves
        its leaderships before it goes, rather than a session timeout later."""
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self.broker_epoch >= 0 and not self.fenced:
            try:
                async with asyncio.timeout(shutdown_timeout):
                    while not await self._controlled_shutdown():
                        await asyncio.sleep(0.05)
                log.info("broker %d: controlled shutdown done", self.node_id)
            except (RequestError, TimeoutError) as exc:
                log.warning("broker %d: no controlled shutdown (%s)", self.node_id, exc)
        for client in self._clients.values():
            await client.close()

    async def _controlled_shutdown(self) -> bool:
        """One heartbeat with want_shut_down; True once the controller lets us go."""
        client = self._controller_client()
        if client is None:
            return False
        beat = await self._heartbeat(client, want_shut_down=True)
        if beat.error_code == ErrorCode.not_controller:
            return False
        # Any other error: the controller will not answer better; go.
        return beat.error_code != ErrorCode.none or beat.should_shut_down

    def _controller_client(self) -> AsyncBrokerClient | None:
        leader = self.quorum.leader_id
        return self._clients.get(leader) if leader is not None else None

    async def _heartbeat(
        self, client: AsyncBrokerClient, *, want_shut_down: bool = False
    ) -> heartbeat_v0.BrokerHeartbeatResponse:
        return await client.send(
            heartbeat_v0.BrokerHeartbeatRequest(
                broker_id=BrokerId(self.node_id),
                broker_epoch=i64(self.broker_epoch),
                current_metadata_offset=i64(self.quorum.applied_offset - 1),
                want_fence=False,
                want_shut_down=want_shut_down,
            ),
            timeout=self._timeout,
            expect=heartbeat_v0.BrokerHeartbeatResponse,
        )

    async def _run(self) -> None:
        while True:
            try:
                await self._beat()
            except RequestError as exc:
                log.debug("controller unreachable: %s", exc)
            except Exception:
                log.exception("broker %d: heartbeat failed", self.node_id)
            await asyncio.sleep(self._interval if self.broker_epoch >= 0 else self._interval / 5)

    async def _beat(self) -> None:
        client = self._controller_client()
        if client is None:
            return
        timeout = self._timeout
        if self.broker_epoch < 0:
            host, port = self.advertised
            response = await client.send(
                registration_v0.BrokerRegistrationRequest(
                    broker_id=BrokerId(self.node_id),
                    cluster_id=self.quorum.cluster_id,
                    incarnation_id=self.incarnation_id,
                    listeners=(
                        registration_v0.request.Listener(
                            name="PLAINTEXT",
                            host=host,
                            port=u16(port),
                            security_protocol=_PLAINTEXT,
                        ),
                    ),
                    features=(),
                    rack=None,
                ),
                timeout=timeout,
                expect=registration_v0.BrokerRegistrationResponse,
            )
            if response.error_code == ErrorCode.none:
                self.broker_epoch = response.broker_epoch
                log.info("broker %d registered (epoch %d)", self.node_id, self.broker_epoch)
            elif response.error_code != ErrorCode.not_controller:
                log.warning(
                    "broker %d: registration refused: %s", self.node_id, response.error_code.name
                )
            return
        beat = await self._heartbeat(client)
        if beat.error_code == ErrorCode.stale_broker_epoch:
            log.warning(
                "broker %d: the controller lost epoch %d; registering again",
                self.node_id,
                self.broker_epoch,
            )
            self.broker_epoch = -1
            self.fenced = True
        elif beat.error_code == ErrorCode.none:
            if beat.is_fenced != self.fenced:
                log.info("broker %d is %s", self.node_id, "fenced" if beat.is_fenced else "active")
            self.fenced = beat.is_fenced
