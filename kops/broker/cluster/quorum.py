"""The controller quorum inside a broker: drives the sans-io RaftNode over asyncio.

Every broker started with ``controller.quorum.voters`` runs one of these on its
event loop and serves the quorum's APIs on its one listener. The node's
actions are performed in order: storage actions through ``RaftStore`` (durable
before the next action, so a vote is on disk before it is answered), appended
entries fsynced and reported back with ``log_flushed``, requests to peers sent
with the pipelined ``AsyncBrokerClient``, and responses to peers handed to the
handler waiting for them. A request that fails in transport is dropped: the
core re-sends on its own timers, which is also how it rides out a dead peer.

All calls into the node happen on the loop; nothing here blocks but the
fsyncs, which are small (metadata entries) and must finish before the node's
next action anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kio.static.protocol import ResponsePayload

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.raft import wire
from kops.broker.cluster.raft.actions import (
    Action,
    AppendEntries,
    ApplyEntries,
    InstallSnapshot,
    RoleChanged,
    Send,
)
from kops.broker.cluster.raft.core import NotLeaderError, QuorumDescription, RaftNode
from kops.broker.cluster.raft.messages import (
    BeginQuorumEpochRequest,
    BeginQuorumEpochResponse,
    EndQuorumEpochRequest,
    EndQuorumEpochResponse,
    Entry,
    FetchRequest,
    FetchResponse,
    FetchSnapshotRequest,
    FetchSnapshotResponse,
    Request,
    Response,
    Snapshot,
    VoteRequest,
    VoteResponse,
)
from kops.broker.cluster.raft.state import RaftConfig, Role
from kops.broker.cluster.raft.store import RaftStore
from kops.broker.cluster.voters import QuorumError
from kops.protocol.async_client import AsyncBrokerClient
from kops.protocol.errors import RequestError

__all__ = ["CommitTimeout", "QuorumDriver", "peer_clients"]

log = logging.getLogger("kops.broker.quorum")

# Kafka's REQUEST_TIMED_OUT: the node produced no answer in time (it always should).
_REQUEST_TIMED_OUT = 7
# Kafka's BROKER_NOT_AVAILABLE: this broker is shutting down.
_BROKER_NOT_AVAILABLE = 8
# Beyond a fetch's own long poll, how long a peer's request may wait for the node.
_ANSWER_GRACE_S = 5.0


def peer_clients(
    peers: Mapping[int, tuple[str, int]], *, client_id: str
) -> dict[int, AsyncBrokerClient]:
    """One client per peer broker, failing fast on a dead one: callers retry on their timers."""
    return {
        peer: AsyncBrokerClient(
            host, port, client_id=client_id, connect_timeout=0.2, backoff_max=0.1
        )
        for peer, (host, port) in peers.items()
    }


class CommitTimeout(TimeoutError):
    """A proposal neither committed nor was replaced in time; it may still commit."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"entry {offset} did not commit in time")
        self.offset = offset


# Which response answers which request: inbound requests are matched to the
# node's Send by (peer, response type, correlation id; 0 where the API has none).
def _answer_key(dest: int, message: Response) -> tuple[int, type, int]:
    corr = (
        message.correlation_id if isinstance(message, FetchResponse | FetchSnapshotResponse) else 0
    )
    return dest, type(message), corr


_RESPONSE_OF: dict[type, type] = {
    VoteRequest: VoteResponse,
    BeginQuorumEpochRequest: BeginQuorumEpochResponse,
    EndQuorumEpochRequest: EndQuorumEpochResponse,
    FetchRequest: FetchResponse,
    FetchSnapshotRequest: FetchSnapshotResponse,
}


class QuorumDriver:
    def __init__(
        self,
        node_id: int,
        voters: Mapping[int, tuple[str, int]],
        directory: Path,
        cluster_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if node_id not in voters:
            raise QuorumError(f"node.id {node_id} is not among the voters {sorted(voters)}")
        self.node_id = node_id
        self.voters = dict(voters)
        self.cluster_id = cluster_id
        self._store = RaftStore(directory)
        self._raft_config = RaftConfig(node_id, frozenset(voters), **dict(config or {}))
        self._rng = rng or random.Random()
        # Set by whoever keeps state from the log (ClusterControl): committed user
        # entries in order, and every role change with its epoch.
        self.on_apply: Callable[[Sequence[Entry]], None] | None = None
        self.on_role_change: Callable[[Role, int], None] | None = None
        # A snapshot replaces the state: the one loaded at start, or the leader's.
        self.on_snapshot: Callable[[Snapshot], None] | None = None
        self._node: RaftNode | None = None
        self._clients = peer_clients(
            {peer: address for peer, address in voters.items() if peer != node_id},
            client_id=f"kops-quorum-{node_id}",
        )
        # None answers a peer's request when the quorum stops while it waits.
        self._waiters: dict[tuple[int, type, int], deque[asyncio.Future[Response | None]]] = (
            defaultdict(deque)
        )
        self._commits: dict[int, tuple[int, asyncio.Future[int]]] = {}
        self._correlation = 0
        self._requests: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False
        self._clock_base = time.monotonic()
        self.applied_offset = 0

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        memory_log, quorum_state = self._store.load()
        self._node = RaftNode(
            self._raft_config, rng=self._rng, log=memory_log, quorum_state=quorum_state
        )
        self.applied_offset = memory_log.start_offset
        if memory_log.snapshot is not None and self.on_snapshot is not None:
            self.on_snapshot(memory_log.snapshot)
        self._perform(self._node.start(self.now_ms()))
        self._timer = asyncio.create_task(self._run_timers(), name="kops-quorum-timers")

    async def stop(self) -> None:
        node = self._node
        if node is not None and node.role is Role.LEADER:
            # Hand over at once rather than after an election timeout; best effort.
            self._perform(node.resign(self.now_ms()))
            if self._requests:
                await asyncio.wait(list(self._requests), timeout=0.5)
        self._stopped = True
        await cancel_and_wait([*self._requests, *([self._timer] if self._timer else [])])
        for client in self._clients.values():
            await client.close()
        # Peers' requests still parked here get an error answer, not a cancelled handler.
        for queue in self._waiters.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_result(None)
        for _, future in self._commits.values():
            if not future.done():
                future.set_exception(NotLeaderError(None, node.epoch if node else 0))
        self._store.close()

    # ---- what the broker asks ----------------------------------------------------------

    @property
    def node(self) -> RaftNode:
        assert self._node is not None, "the quorum is not started"
        return self._node

    @property
    def leader_id(self) -> int | None:
        return self.node.leader_id

    @property
    def epoch(self) -> int:
        return self.node.epoch

    @property
    def role(self) -> Role:
        return self.node.role

    def describe(self) -> QuorumDescription:
        """The leader's view; NotLeaderError on any other node."""
        return self.node.describe()

    def wall_clock_ms(self, node_ms: int) -> int:
        """A time on the node's clock as Unix ms (-1 stays -1)."""
        if node_ms < 0:
            return -1
        return int(time.time() * 1000) - (self.now_ms() - node_ms)

    async def propose(self, payload: bytes, timeout: float = 10.0) -> int:
        """Append an entry as the leader; returns its offset once committed.

        NotLeaderError if this node is not the leader, or if the entry was
        replaced by another leader's before it committed. CommitTimeout if neither
        happened in time: the entry may still commit later.
        """
        node = self.node
        proposal = node.propose(payload, self.now_ms())
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._commits[proposal.offset] = (proposal.epoch, future)
        self._perform(proposal.actions)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise CommitTimeout(proposal.offset) from None
        finally:
            self._commits.pop(proposal.offset, None)

    def snapshot(self, state: bytes) -> int:
        """Store `state` as the snapshot of everything applied so far; returns its end offset.

        Entries below it are then deleted from the log (a returning voter that
        needs them gets the snapshot instead). 0 if nothing new was applied.
        """
        end = self.applied_offset
        if self._stopped or end <= self.node.log.start_offset:
            return 0
        self._perform(self.node.snapshot(end, state, self.now_ms()))
        return end

    async def serve(self, request: Any, api_version: int) -> ResponsePayload:
        """Answer a peer's quorum request (a kio request object) with the node's answer."""
        api_key = int(request.__api_key__)
        if self._stopped:
            return wire.error_response(api_key, api_version, _BROKER_NOT_AVAILABLE)
        self._correlation += 1
        try:
            message = wire.decode_request(
                request, cluster_id=self.cluster_id, correlation_id=self._correlation
            )
        except wire.WireError as exc:
            return wire.error_response(api_key, api_version, exc.error_code)
        src = wire.sender_of(message)
        corr = (
            message.correlation_id
            if isinstance(message, FetchRequest | FetchSnapshotRequest)
            else 0
        )
        key = (src, _RESPONSE_OF[type(message)], corr)
        waiter: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self._waiters[key].append(waiter)
        self._perform(self.node.handle(src, message, self.now_ms()))
        wait = _ANSWER_GRACE_S
        if isinstance(message, FetchRequest):
            wait += message.max_wait_ms / 1000
        try:
            async with asyncio.timeout(wait):
                response = await waiter
        except TimeoutError:
            log.warning("quorum: no answer to %s from node %d", type(message).__name__, src)
            return wire.error_response(api_key, api_version, _REQUEST_TIMED_OUT)
        finally:
            queue = self._waiters.get(key)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
            if queue is not None and not queue:
                del self._waiters[key]
        if response is None:  # stopped while the peer waited
            return wire.error_response(api_key, api_version, _BROKER_NOT_AVAILABLE)
        return wire.encode_response(response, api_version)

    # ---- performing the node's actions -------------------------------------------------

    def now_ms(self) -> int:
        """The node's clock (ms since this driver was made): the one its timers use."""
        return int((time.monotonic() - self._clock_base) * 1000)

    def _perform(self, actions: list[Action]) -> None:
        if self._stopped:  # the store is closed; peers will hear from the others
            return
        appended = False
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, ApplyEntries):
                self._apply(action)
            elif isinstance(action, RoleChanged):
                self._role_changed(action)
            elif isinstance(action, InstallSnapshot):
                self._store.apply(action)
                self.applied_offset = action.snapshot.end_offset
                log.info("quorum: node %d installed the leader's snapshot at offset %d",
                         self.node_id, action.snapshot.end_offset)  # fmt: skip
                if self.on_snapshot is not None:
                    self.on_snapshot(action.snapshot)
            else:
                self._store.apply(action)
                appended |= isinstance(action, AppendEntries)
        if appended:
            end = self._store.flush()
            self._perform(self.node.log_flushed(end, self.now_ms()))
        self._wake.set()

    def _send(self, action: Send) -> None:
        message = action.message
        if isinstance(message, Request):
            task = asyncio.create_task(self._request(action.dest, message))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            return
        queue = self._waiters.get(_answer_key(action.dest, message))
        if queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(message)
        # else: the peer's request timed out here already; it will ask again.

    async def _request(self, dest: int, message: Request) -> None:
        client = self._clients.get(dest)
        if client is None:
            return
        timeout = self._raft_config.request_timeout_ms / 1000
        if isinstance(message, FetchRequest):
            timeout += message.max_wait_ms / 1000
        try:
            raw = await client.send(
                wire.encode_request(message, cluster_id=self.cluster_id), timeout=timeout
            )
            corr = getattr(message, "correlation_id", 0)
            response = wire.decode_response(raw, correlation_id=corr)
        except (RequestError, wire.WireError) as exc:
            log.debug("quorum: %s to node %d failed: %s", type(message).__name__, dest, exc)
            return
        self._perform(self.node.handle(dest, response, self.now_ms()))

    def _apply(self, action: ApplyEntries) -> None:
        self.applied_offset = action.high_watermark
        for entry in action.entries:
            pending = self._commits.get(entry.offset)
            if pending is not None and not pending[1].done():
                epoch, future = pending
                if entry.epoch == epoch:
                    future.set_result(entry.offset)
                else:
                    future.set_exception(NotLeaderError(self.node.leader_id, self.node.epoch))
        if self.on_apply is not None:
            user = [entry for entry in action.entries if not entry.control]
            if user:
                self.on_apply(user)

    def _role_changed(self, action: RoleChanged) -> None:
        if self.on_role_change is not None:
            self.on_role_change(action.role, action.epoch)
        if action.role is Role.LEADER:
            log.info("quorum: node %d leads epoch %d", self.node_id, action.epoch)
        elif action.role is Role.FOLLOWER:
            log.info(
                "quorum: node %d follows node %s in epoch %d",
                self.node_id,
                action.leader_id,
                action.epoch,
            )
        else:
            log.debug("quorum: node %d is %s in epoch %d", self.node_id, action.role.value,
                      action.epoch)  # fmt: skip

    async def _run_timers(self) -> None:
        while True:
            delay = (self.node.next_deadline_ms() - self.now_ms()) / 1000
            self._wake.clear()
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that
                # arrives as the event is set, and stop() would wait for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, 1.0)):
                        await self._wake.wait()
            try:
                self._perform(self.node.tick(self.now_ms()))
            except Exception:
                # A failing store (disk full, EIO) leaves the node ahead of its disk:
                # stop taking part (the others elect without us) rather than go on.
                log.exception("quorum: node %d stopped: its metadata log failed", self.node_id)
                raise
