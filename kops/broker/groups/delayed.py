"""JoinGroup's delayed operations (Kafka's DelayedJoin and InitialDelayedJoin).

A rebalance parks one of these in the coordinator's purgatory under the group
id. Each member's JoinGroup response waits on its own future; these decide
when the join phase ends and all of them are answered.
"""

from __future__ import annotations

from collections.abc import Callable

from kops.broker.groups.group import Group, GroupState
from kops.broker.purgatory import DelayedOperation

__all__ = ["DelayedJoin", "InitialDelayedJoin"]


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
