"""JoinGroup's delayed operations (Kafka's DelayedJoin and InitialDelayedJoin),
and answering the JoinGroup and SyncGroup responses members wait for.

A rebalance parks one of these in the coordinator's purgatory under the group
id. Each member's JoinGroup response waits on its own future; these decide
when the join phase ends and all of them are answered.
"""

from __future__ import annotations

from collections.abc import Callable

from kops.broker.groups.group import Group, GroupState, JoinResult, Member, SyncResult
from kops.broker.purgatory import DelayedOperation

__all__ = ["DelayedJoin", "InitialDelayedJoin", "resolve_join", "resolve_sync"]


def resolve_join(member: Member, result: JoinResult) -> None:
    """Answer the member's parked JoinGroup, if it has one."""
    future, member.join_future = member.join_future, None
    if future is not None and not future.done():
        future.set_result(result)


def resolve_sync(member: Member, result: SyncResult) -> None:
    """Answer the member's parked SyncGroup, if it has one."""
    future, member.sync_future = member.sync_future, None
    if future is not None and not future.done():
        future.set_result(result)


class DelayedJoin(DelayedOperation):
    """Ends the join phase once every member has rejoined, or at the rebalance timeout."""

    def __init__(self, group: Group, delay: float, on_done: Callable[[Group], None]) -> None:
        super().__init__(delay)
        self.group = group
        self._on_done = on_done

    def try_complete(self) -> bool:
        group = self.group
        if (
            group.is_(GroupState.PREPARING_REBALANCE)
            and not group.initial_delay_active
            and group.all_joined()
        ):
            return self.force_complete()
        return False

    def on_complete(self) -> None:
        self._on_done(self.group)


class InitialDelayedJoin(DelayedOperation):
    """`group.initial.rebalance.delay.ms` for an Empty group's first rebalance:
    only time ends it, so members joining together land in one generation."""

    def __init__(
        self,
        group: Group,
        delay: float,
        remaining_ms: int,
        on_done: Callable[[Group, int], None],
    ) -> None:
        super().__init__(delay)
        self.group = group
        self.remaining_ms = remaining_ms
        self._on_done = on_done

    def try_complete(self) -> bool:
        return False

    def on_complete(self) -> None:
        self._on_done(self.group, self.remaining_ms)
