"""Which `__consumer_offsets` partitions the coordinator serves, as a mixin of GroupCoordinator.

Kafka's rule: a broker coordinates exactly the groups whose offsets partition
(`partition_for(group_id, n)`) it leads. The broker tells the coordinator
when it becomes a partition's leader (`elect`: load its groups, as
GroupMetadataManager.loadGroupsForPartition) and when it stops being one
(`resign`: unload them, as removeGroupsForPartition). `groups` holds the
groups of owned partitions and no others, so what the coordinator finds
there it may serve; every request for another group gets NOT_COORDINATOR
from `precheck` and the client looks the coordinator up again.

A single broker owns every partition from the start; in a cluster the
broker learns the partition count from the metadata (`set_partition_count`)
and elects partitions as their leadership reaches it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from kops.broker.groups.delayed import resolve_join, resolve_sync
from kops.broker.groups.group import Group, GroupState, JoinResult, Member, SyncResult
from kops.broker.groups.storage import OFFSETS_TOPIC

if TYPE_CHECKING:
    from kops.broker.groups.storage import OffsetsTopic
    from kops.broker.purgatory import Purgatory

log = logging.getLogger("kops.broker.groups")


class OwnershipMixin:
    # Provided by GroupCoordinator.
    groups: dict[str, Group]
    store: OffsetsTopic
    loading: bool
    # Indexes of the offsets partitions whose groups are loaded.
    owned: set[int]
    _joins: Purgatory[str]

    def _schedule_expiry(
        self, group: Group, member: Member, timeout_ms: int | None = None
    ) -> None: ...

    def _own_all(self) -> None:
        """A single broker: create the offsets topic if need be, lead and load all of it."""
        self.store.ensure()
        loaded = sum(self.elect(index) for index in range(self.store.partitions))
        log.info(
            "loaded %d groups from %s (%d partitions)", loaded, OFFSETS_TOPIC, self.store.partitions
        )

    def owns(self, group_id: str) -> bool:
        """Whether this coordinator serves the group (it leads the group's partition)."""
        # Before the partition count is known no group can be placed, so none is ours.
        return bool(self.store.partitions) and self.store.partition_for(group_id) in self.owned

    def set_partition_count(self, n: int) -> None:
        """The offsets topic has `n` partitions (the broker learns it from the metadata)."""
        current = self.store.partitions
        if n == current:
            return
        if current or n <= 0:
            # Another count would place groups in other partitions than their records.
            log.warning(
                "ignoring %s partition count %d: it is %d and cannot change",
                OFFSETS_TOPIC,
                n,
                current,
            )
            return
        self.store.partitions = n

    def elect(self, index: int) -> int:
        """This broker now leads offsets partition `index`: load its groups.

        Returns how many were loaded; electing an owned partition does nothing.
        """
        if index in self.owned:
            return 0
        if not 0 <= index < self.store.partitions:
            log.error(
                "cannot load %s-%d: the topic has %d partitions",
                OFFSETS_TOPIC,
                index,
                self.store.partitions,
            )
            return 0
        state = self.store.load_partition(index)
        if state is None:
            log.error("cannot load %s-%d: this broker does not host it", OFFSETS_TOPIC, index)
            return 0
        loaded = 0
        for group_id, group in state.restore_groups().items():
            if self.store.partition_for(group_id) != index:
                # Kept out of `groups`: no partition we own would ever unload it.
                log.warning("%s-%d holds misplaced group %s", OFFSETS_TOPIC, index, group_id)
                continue
            self.groups[group_id] = group
            loaded += 1
            # Members keep their generation across a coordinator change; those
            # that do not come back expire after their session timeout.
            for member in group.members.values():
                self._schedule_expiry(group, member)
        self.owned.add(index)
        # A single broker's start-up load of every partition is summed up once, by _own_all.
        log.log(
            logging.DEBUG if self.loading else logging.INFO,
            "loaded %d groups from %s-%d",
            loaded,
            OFFSETS_TOPIC,
            index,
        )
        return loaded

    def resign(self, index: int) -> int:
        """This broker no longer leads offsets partition `index`: unload its groups.

        Returns how many were unloaded; resigning a partition not owned does nothing.
        """
        if index not in self.owned:
            return 0
        self.owned.discard(index)
        doomed = [g for gid, g in self.groups.items() if self.store.partition_for(gid) == index]
        for group in doomed:
            del self.groups[group.group_id]
            self._unload(group)
        log.info("unloaded %d groups of %s-%d", len(doomed), OFFSETS_TOPIC, index)
        return len(doomed)

    def _unload(self, group: Group) -> None:
        group.cancel_timers()
        group.pending.clear()
        # Parked clients retry at the new coordinator, as on a Kafka failover.
        for member in group.members.values():
            resolve_join(member, JoinResult(ErrorCode.not_coordinator, member.member_id))
            resolve_sync(member, SyncResult(ErrorCode.not_coordinator))
        # Cancelling the join phase unwatched it; this drops the key's empty entry.
        self._joins.check_and_complete(group.group_id)
        # As Kafka's onGroupUnloaded: whatever still holds the group sees it Dead.
        group.transition(GroupState.DEAD)
