"""The classic group coordinator: JoinGroup, SyncGroup, Heartbeat, LeaveGroup.

It follows Kafka's `GroupCoordinator` closely so that clients see the replies
they expect. Everything runs on the broker's event loop: a JoinGroup or
SyncGroup that has to wait for other members parks an asyncio future on its
member, and whichever event completes the rebalance (the last member
rejoining, a timer, the leader's SyncGroup) resolves those futures. Other
connections keep being served meanwhile. The join phase is a delayed
operation (kops.broker.purgatory) keyed by group id, completed when every
member has rejoined or at its timeout; the other timers are `loop.call_later`
handles:

- per member: the session timeout (reset by every heartbeat, join, sync and
  commit), or for a member whose first JoinGroup is still pending, a long join
  timeout (it cannot heartbeat without its member id);
- per pending member id (MEMBER_ID_REQUIRED handed out): the session timeout;
- per group: the rebalance timeout (or `group.initial.rebalance.delay.ms`
  when an Empty group starts its first rebalance), and after a join completes
  the rebalance timeout again for members to send SyncGroup.

Committed offsets, group listing and deletion are in `offsets.py`; which
`__consumer_offsets` partitions (and so which groups) this coordinator serves,
and loading and unloading them, in `ownership.py`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from kops.broker.aio import cancel_and_wait
from kops.broker.groups.delayed import DelayedJoin, InitialDelayedJoin, resolve_join, resolve_sync
from kops.broker.groups.group import (
    Group,
    GroupState,
    JoinRequest,
    JoinResult,
    Member,
    SyncResult,
)
from kops.broker.groups.offsets import OffsetsMixin
from kops.broker.groups.ownership import OwnershipMixin
from kops.broker.groups.storage import OffsetsTopic, group_key, group_value, write_error
from kops.broker.groups.txn_offsets import TxnOffsetsMixin
from kops.broker.purgatory import Purgatory

if TYPE_CHECKING:
    from kops.broker.cluster.view import ClusterView

log = logging.getLogger("kops.broker.groups")

# A JoinGroup response still to be sent, resolved when the join phase ends.
JoinFuture = asyncio.Future[JoinResult]

# Kafka's GroupCoordinator.NewMemberJoinTimeoutMs.
NEW_MEMBER_JOIN_TIMEOUT_MS = 5 * 60 * 1000

S = GroupState


class GroupCoordinator(OwnershipMixin, OffsetsMixin, TxnOffsetsMixin):
    def __init__(self, broker: ClusterView) -> None:
        config = broker.config
        self.broker = broker
        self.groups: dict[str, Group] = {}
        self.store = OffsetsTopic(broker)
        self.owned: set[int] = set()
        self.loading = True
        self.initial_delay_ms = config.int("group.initial.rebalance.delay.ms")
        self.min_session_ms = config.int("group.min.session.timeout.ms")
        self.max_session_ms = config.int("group.max.session.timeout.ms")
        self.metadata_max_bytes = int(config.get("offset.metadata.max.bytes") or 4096)
        self.retention_ms = config.int("offsets.retention.minutes") * 60_000
        self.retention_check_ms = int(config.get("offsets.retention.check.interval.ms") or 600_000)
        self._loop = asyncio.get_running_loop()
        self._tasks: list[asyncio.Task[None]] = []
        # Join phases in progress, by group id.
        self._joins: Purgatory[str] = Purgatory("rebalance")
        # Generations completed since start (kops.broker.metrics reads it when scraped).
        self.rebalances = 0

    @property
    def pending_joins(self) -> int:
        """Join phases parked in the rebalance purgatory."""
        return len(self._joins)

    # ---- lifecycle ----------------------------------------------------------
    async def start(self, *, own_all: bool = True) -> None:
        """`own_all`: a single broker, leading all of the offsets topic. Otherwise (a
        cluster) the broker sets the partition count and elects the partitions it leads."""
        if own_all:
            self._own_all()
        self.loading = False
        self._tasks.append(asyncio.create_task(self._expiry_loop()))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        # Owning nothing, it sends requests arriving until the server closes to look
        # for the coordinator again (NOT_COORDINATOR) instead of writing to closing logs.
        groups, self.groups = self.groups, {}
        self.owned.clear()
        for group in groups.values():
            self._unload(group)

    def precheck(self, group_id: str | None, *, allow_empty: bool = False) -> ErrorCode:
        """Kafka's GroupCoordinator.validateGroupStatus: the group id, loading, then
        whether this coordinator serves the group at all.

        Group membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and
        OffsetDelete need a non-empty group id; OffsetCommit, OffsetFetch,
        DescribeGroups and DeleteGroups (`allow_empty`) accept "" for backward
        compatibility, only a null id being invalid (isValidGroupId; likewise
        GroupCoordinatorService's null-only checks for those four).
        """
        if group_id is None or (not group_id and not allow_empty):
            return ErrorCode.invalid_group_id
        if self.loading:
            return ErrorCode.coordinator_load_in_progress
        if not self.owns(group_id):
            return ErrorCode.not_coordinator
        return ErrorCode.none

    # ---- JoinGroup ------------------------------------------------------------
    async def join_group(self, req: JoinRequest) -> JoinResult:
        error = self.precheck(req.group_id)
        if error:
            return JoinResult(error, req.member_id)
        if not self.min_session_ms <= req.session_timeout_ms <= self.max_session_ms:
            return JoinResult(ErrorCode.invalid_session_timeout, req.member_id)
        group = self.groups.get(req.group_id)
        if group is None:
            if req.member_id:
                return JoinResult(ErrorCode.unknown_member_id, req.member_id)
            group = self.groups[req.group_id] = Group(req.group_id)
        future: JoinFuture = self._loop.create_future()
        self._do_join(group, req, future)
        if group.is_(S.PREPARING_REBALANCE):
            self._try_complete_join(group)
        return await future

    def _do_join(self, group: Group, req: JoinRequest, future: JoinFuture) -> None:
        def reply(error: ErrorCode) -> None:
            future.set_result(JoinResult(error, req.member_id))

        if group.is_(S.DEAD):
            reply(ErrorCode.coordinator_not_available)
        elif not group.supports(req.protocol_type, req.protocols):
            reply(ErrorCode.inconsistent_group_protocol)
        elif not req.member_id:
            self._join_unknown_member(group, req, future)
        elif req.member_id in group.pending:
            group.pending.pop(req.member_id).cancel()
            self._add_member_and_rebalance(group, req, req.member_id, future)
        elif group.is_static_member_fenced(req.member_id, req.instance_id):
            reply(ErrorCode.fenced_instance_id)
        elif not group.has(req.member_id) or (
            req.instance_id is not None and req.instance_id not in group.static_members
        ):
            reply(ErrorCode.unknown_member_id)
        else:
            self._join_known_member(group, group.members[req.member_id], req, future)

    def _join_unknown_member(self, group: Group, req: JoinRequest, future: JoinFuture) -> None:
        member_id = f"{req.client_id}-{uuid.uuid4()}"
        old_id = group.static_members.get(req.instance_id) if req.instance_id is not None else None
        if old_id is not None and group.has(old_id):
            self._rejoin_static_member(group, req, old_id, member_id, future)
        elif req.instance_id is None and req.require_known_member_id:
            # The id is remembered (and counted as not yet joined) until the
            # client rejoins with it or a session timeout passes.
            group.pending[member_id] = self._loop.call_later(
                req.session_timeout_ms / 1000, self._expire_pending, group, member_id
            )
            future.set_result(JoinResult(ErrorCode.member_id_required, member_id))
        else:
            self._add_member_and_rebalance(group, req, member_id, future)

    def _join_known_member(
        self, group: Group, member: Member, req: JoinRequest, future: JoinFuture
    ) -> None:
        if group.is_(S.PREPARING_REBALANCE):
            self._update_member_and_rebalance(group, member, req, future)
        elif group.is_(S.COMPLETING_REBALANCE):
            if member.matches(req.protocols):
                # A retry of a JoinGroup whose response was lost: same answer.
                future.set_result(
                    self._join_result(group, member, with_members=group.is_leader(member.member_id))
                )
            else:
                self._update_member_and_rebalance(group, member, req, future)
        elif group.is_(S.STABLE):
            if group.is_leader(member.member_id) or not member.matches(req.protocols):
                self._update_member_and_rebalance(group, member, req, future)
            else:
                # A follower with unchanged metadata just gets the current generation.
                future.set_result(self._join_result(group, member, with_members=False))
        else:
            future.set_result(JoinResult(ErrorCode.unknown_member_id, member.member_id))

    def _add_member_and_rebalance(
        self, group: Group, req: JoinRequest, member_id: str, future: JoinFuture
    ) -> None:
        member = Member(
            member_id,
            req.instance_id,
            req.client_id,
            req.client_host,
            req.session_timeout_ms,
            req.rebalance_timeout_ms,
            req.protocol_type,
            req.protocols,
            join_future=future,
            is_new=True,
        )
        if group.is_(S.PREPARING_REBALANCE) and group.generation == 0:
            # Lets the initial delay extend while members keep arriving.
            group.new_member_added = True
        group.add(member)
        self._schedule_expiry(group, member, NEW_MEMBER_JOIN_TIMEOUT_MS)
        self._maybe_prepare_rebalance(group, f"member {member_id} joined")

    def _update_member_and_rebalance(
        self, group: Group, member: Member, req: JoinRequest, future: JoinFuture
    ) -> None:
        self._update_member(member, req, future)
        self._maybe_prepare_rebalance(group, f"member {member.member_id} rejoined")

    def _update_member(self, member: Member, req: JoinRequest, future: JoinFuture) -> None:
        # A JoinGroup still parked for this member belongs to a connection the
        # client gave up on; release it so it does not linger.
        resolve_join(member, JoinResult(ErrorCode.rebalance_in_progress, member.member_id))
        member.protocols = req.protocols
        member.session_timeout_ms = req.session_timeout_ms
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.client_id, member.client_host = req.client_id, req.client_host
        member.join_future = future

    def _rejoin_static_member(
        self,
        group: Group,
        req: JoinRequest,
        old_id: str,
        new_id: str,
        future: JoinFuture,
    ) -> None:
        """KIP-345: a restarted static member takes over its old member id's place."""
        assert req.instance_id is not None
        old_leader = group.leader
        old = group.members[old_id]
        resolve_join(old, JoinResult(ErrorCode.fenced_instance_id, old_id))
        resolve_sync(old, SyncResult(ErrorCode.fenced_instance_id))
        member = group.replace_static_member(req.instance_id, old_id, new_id)
        self._update_member(member, req, future)
        self._schedule_expiry(group, member)
        if group.is_(S.STABLE):
            if group.select_protocol() == group.protocol_name:
                # No rebalance: the member syncs and gets its old assignment back.
                # The old leader id is returned so that even a restarted leader
                # acts as a follower and does not compute an assignment that a
                # Stable group would never hand out.
                error = self._store_group(group)
                result = self._join_result(group, member, with_members=False, error=error)
                result.leader = old_leader or ""
                resolve_join(member, result)
            else:
                self._prepare_rebalance(group, f"static member {req.instance_id} changed protocols")
        elif group.is_(S.COMPLETING_REBALANCE):
            # The leader may already be assigning to the old member id.
            self._prepare_rebalance(group, f"static member {req.instance_id} rejoined during sync")

    def _join_result(
        self, group: Group, member: Member, *, with_members: bool, error: ErrorCode = ErrorCode.none
    ) -> JoinResult:
        return JoinResult(
            error,
            member.member_id,
            group.generation,
            group.protocol_type,
            group.protocol_name,
            group.leader or "",
            group.member_metadata() if with_members else [],
        )

    # ---- rebalance ------------------------------------------------------------
    def _maybe_prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.is_(S.STABLE, S.COMPLETING_REBALANCE, S.EMPTY):
            self._prepare_rebalance(group, reason)

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.is_(S.COMPLETING_REBALANCE):
            self._reset_assignments(group, ErrorCode.rebalance_in_progress)
        self._cancel_sync_timer(group)
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
        timeout_ms = group.max_rebalance_timeout_ms()
        if group.is_(S.EMPTY) and self.initial_delay_ms > 0:
            group.initial_delay_active = True
            group.new_member_added = False
            remaining = max(timeout_ms - self.initial_delay_ms, 0)
            self._park_join(
                group,
                InitialDelayedJoin(
                    group, self.initial_delay_ms / 1000, remaining, self._on_initial_delay
                ),
            )
        else:
            self._park_join(group, DelayedJoin(group, timeout_ms / 1000, self._on_join_done))
        log.debug(
            "group %s preparing rebalance (generation %d): %s",
            group.group_id,
            group.generation,
            reason,
        )
        group.transition(S.PREPARING_REBALANCE)
        self._try_complete_join(group)

    def _on_initial_delay(self, group: Group, remaining_ms: int) -> None:
        group.rebalance_timer = None
        if not group.is_(S.PREPARING_REBALANCE) or not group.initial_delay_active:
            return
        if group.new_member_added and remaining_ms > 0:
            group.new_member_added = False
            delay = min(self.initial_delay_ms, remaining_ms)
            self._park_join(
                group,
                InitialDelayedJoin(
                    group, delay / 1000, max(remaining_ms - delay, 0), self._on_initial_delay
                ),
            )
            return
        group.initial_delay_active = False
        self._complete_join(group)

    def _park_join(self, group: Group, operation: DelayedJoin | InitialDelayedJoin) -> None:
        group.rebalance_timer = operation
        self._joins.try_complete_else_watch(operation, [group.group_id])

    def _on_join_done(self, group: Group) -> None:
        # Every member rejoined, or the rebalance timeout passed.
        group.rebalance_timer = None
        if group.is_(S.PREPARING_REBALANCE):
            self._complete_join(group)

    def _try_complete_join(self, group: Group) -> None:
        self._joins.check_and_complete(group.group_id)

    def _complete_join(self, group: Group) -> None:
        # Dynamic members that did not rejoin in time are gone; static ones stay
        # (they may be restarting) and are assigned as usual.
        for member in list(group.members.values()):
            if not member.awaiting_join and member.instance_id is None:
                group.remove(member.member_id)
        if group.is_(S.DEAD):
            return
        if group.members and not group.elect_joined_leader():
            # Only absent static members are left: wait for them to rejoin or expire.
            self._park_join(
                group,
                DelayedJoin(group, group.max_rebalance_timeout_ms() / 1000, self._on_join_done),
            )
            return
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
            group.rebalance_timer = None
        group.initial_delay_active = False
        group.generation += 1
        self.rebalances += 1
        if not group.members:
            group.protocol_name = None
            group.leader = None
            group.transition(S.EMPTY)
            self._store_group(group)
            log.info("group %s is empty (generation %d)", group.group_id, group.generation)
            return
        group.protocol_name = group.select_protocol()
        group.transition(S.COMPLETING_REBALANCE)
        log.info(
            "group %s generation %d: %d members, protocol %s, leader %s",
            group.group_id,
            group.generation,
            len(group.members),
            group.protocol_name,
            group.leader,
        )
        group.pending_sync = set()
        for member in group.members.values():
            if member.awaiting_join:
                result = self._join_result(
                    group, member, with_members=group.is_leader(member.member_id)
                )
                resolve_join(member, result)
                member.is_new = False
                group.pending_sync.add(member.member_id)
                self._schedule_expiry(group, member)
        group.sync_timer = self._loop.call_later(
            group.max_rebalance_timeout_ms() / 1000, self._on_sync_timeout, group, group.generation
        )

    def _on_sync_timeout(self, group: Group, generation: int) -> None:
        group.sync_timer = None
        if generation != group.generation or not group.is_(S.COMPLETING_REBALANCE, S.STABLE):
            return
        if group.pending_sync:
            for member_id in list(group.pending_sync):
                group.remove(member_id)
            self._prepare_rebalance(
                group, "members did not send SyncGroup within the rebalance timeout"
            )

    def _cancel_sync_timer(self, group: Group) -> None:
        if group.sync_timer is not None:
            group.sync_timer.cancel()
            group.sync_timer = None

    def _reset_assignments(self, group: Group, error: ErrorCode) -> None:
        for member in group.members.values():
            member.assignment = b""
            resolve_sync(member, SyncResult(error))

    # ---- SyncGroup --------------------------------------------------------------
    async def sync_group(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: dict[str, bytes],
    ) -> SyncResult:
        error = self.precheck(group_id)
        group = self.groups.get(group_id)
        if not error:
            error = self._check_member(group, member_id, instance_id, generation)
        if error:
            return SyncResult(error)
        assert group is not None
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
            protocol_name is not None and protocol_name != group.protocol_name
        ):
            return SyncResult(ErrorCode.inconsistent_group_protocol)
        member = group.members[member_id]
        if group.is_(S.EMPTY):
            return SyncResult(ErrorCode.unknown_member_id)
        if group.is_(S.PREPARING_REBALANCE):
            return SyncResult(ErrorCode.rebalance_in_progress)
        group.pending_sync.discard(member_id)
        self._schedule_expiry(group, member)
        if group.is_(S.STABLE):
            return self._sync_result(group, member)
        # CompletingRebalance: wait for the leader's assignment.
        future: asyncio.Future[SyncResult] = self._loop.create_future()
        resolve_sync(member, SyncResult(ErrorCode.rebalance_in_progress))
        member.sync_future = future
        if group.is_leader(member_id):
            self._complete_sync(group, assignments)
        return await future

    def _complete_sync(self, group: Group, assignments: dict[str, bytes]) -> None:
        for member in group.members.values():
            # Members the leader left out get an empty assignment, as in Kafka.
            member.assignment = assignments.get(member.member_id, b"")
        error = self._store_group(group)
        if error:
            self._reset_assignments(group, error)
            self._maybe_prepare_rebalance(group, "storing the group assignment failed")
            return
        group.transition(S.STABLE)
        for member in group.members.values():
            if member.awaiting_sync:
                resolve_sync(member, self._sync_result(group, member))
                self._schedule_expiry(group, member)
        if not group.pending_sync:
            self._cancel_sync_timer(group)

    @staticmethod
    def _sync_result(group: Group, member: Member) -> SyncResult:
        return SyncResult(
            ErrorCode.none, member.assignment, group.protocol_type, group.protocol_name
        )

    # ---- Heartbeat / LeaveGroup -------------------------------------------------
    def heartbeat(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        error = self.precheck(group_id)
        group = self.groups.get(group_id)
        if not error:
            error = self._check_member(group, member_id, instance_id, generation)
        if error:
            return error
        assert group is not None
        if group.is_(S.EMPTY):
            return ErrorCode.unknown_member_id
        self._schedule_expiry(group, group.members[member_id])
        if group.is_(S.PREPARING_REBALANCE):
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave_group(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> tuple[ErrorCode, list[tuple[str, str | None, ErrorCode]]]:
        """Remove members; returns the top-level error and one error per member."""
        error = self.precheck(group_id)
        if error:
            return error, [(m, i, error) for m, i in members]
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.none, [(m, i, ErrorCode.unknown_member_id) for m, i in members]
        if group.is_(S.DEAD):
            return ErrorCode.coordinator_not_available, []
        results: list[tuple[str, str | None, ErrorCode]] = []
        for member_id, instance_id in members:
            if not member_id and instance_id is not None:
                member_id = group.static_members.get(instance_id, "")
            if group.is_static_member_fenced(member_id, instance_id):
                results.append((member_id, instance_id, ErrorCode.fenced_instance_id))
            elif member_id in group.pending:
                group.pending.pop(member_id).cancel()
                results.append((member_id, instance_id, ErrorCode.none))
                self._try_complete_join(group)
            elif not group.has(member_id):
                results.append((member_id, instance_id, ErrorCode.unknown_member_id))
            else:
                self._remove_member_and_update_group(
                    group, group.members[member_id], "left the group"
                )
                results.append((member_id, instance_id, ErrorCode.none))
        return ErrorCode.none, results

    def _check_member(
        self, group: Group | None, member_id: str, instance_id: str | None, generation: int
    ) -> ErrorCode:
        """The fencing checks Sync, Heartbeat and member commits share, in Kafka's order."""
        if group is None:
            return ErrorCode.unknown_member_id
        if group.is_(S.DEAD):
            return ErrorCode.coordinator_not_available
        if group.is_static_member_fenced(member_id, instance_id):
            return ErrorCode.fenced_instance_id
        if not group.has(member_id):
            return ErrorCode.unknown_member_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        return ErrorCode.none

    def _remove_member_and_update_group(self, group: Group, member: Member, reason: str) -> None:
        log.info("group %s: member %s %s", group.group_id, member.member_id, reason)
        # A new member may be parked in JoinGroup; UNKNOWN_MEMBER_ID makes it rejoin if still alive.
        resolve_join(member, JoinResult(ErrorCode.unknown_member_id, member.member_id))
        resolve_sync(member, SyncResult(ErrorCode.unknown_member_id))
        group.remove(member.member_id)
        if group.is_(S.STABLE, S.COMPLETING_REBALANCE):
            self._maybe_prepare_rebalance(group, f"member {member.member_id} {reason}")
        elif group.is_(S.PREPARING_REBALANCE):
            self._try_complete_join(group)

    # ---- timers -------------------------------------------------------------------
    def _schedule_expiry(self, group: Group, member: Member, timeout_ms: int | None = None) -> None:
        member.cancel_timer()
        if timeout_ms is None:
            timeout_ms = member.session_timeout_ms
        member.timer = self._loop.call_later(
            timeout_ms / 1000, self._on_member_expired, group, member
        )

    def _on_member_expired(self, group: Group, member: Member) -> None:
        member.timer = None
        if group.members.get(member.member_id) is not member:
            return
        # A member parked in JoinGroup or SyncGroup is waiting on us, not silent;
        # completing the rebalance reschedules its timer.
        if not member.is_new and (member.awaiting_join or member.awaiting_sync):
            return
        self._remove_member_and_update_group(group, member, "expired (session timeout)")

    def _expire_pending(self, group: Group, member_id: str) -> None:
        if group.pending.pop(member_id, None) is not None:
            self._try_complete_join(group)

    # ---- helpers --------------------------------------------------------------------
    def _store_group(self, group: Group) -> ErrorCode:
        try:
            self.store.write(group.group_id, [(group_key(group.group_id), group_value(group))])
        except Exception as exc:
            return write_error(exc, f"store group {group.group_id}")
        return ErrorCode.none
