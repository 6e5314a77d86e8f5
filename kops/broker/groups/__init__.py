"""The group coordinator: consumer groups and committed offsets.

- `group.py`: a group's members, state and protocol choice (no I/O);
- `coordinator.py`: JoinGroup/SyncGroup/Heartbeat/LeaveGroup, timers, loading;
- `offsets.py`: OffsetCommit/OffsetFetch/OffsetDelete, list/describe/delete;
- `storage.py`: the `__consumer_offsets` record format and placement.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kops.broker.broker import Broker
    from kops.broker.groups.coordinator import GroupCoordinator


def handler_modules() -> list[ModuleType]:
    """Handler modules of the group APIs, for the broker's API table."""
    from kops.broker.handlers import (
        delete_groups,
        describe_groups,
        find_coordinator,
        heartbeat,
        join_group,
        leave_group,
        list_groups,
        offset_commit,
        offset_delete,
        offset_fetch,
        sync_group,
    )

    return [
        offset_commit,
        offset_fetch,
        find_coordinator,
        join_group,
        heartbeat,
        leave_group,
        sync_group,
        describe_groups,
        list_groups,
        delete_groups,
        offset_delete,
    ]


async def attach(broker: Broker) -> None:
    """Create the coordinator, creating `__consumer_offsets` if needed, and load every group."""
    from kops.broker.groups.coordinator import GroupCoordinator

    coordinator = GroupCoordinator(broker)
    # Set before loading so requests arriving meanwhile get COORDINATOR_LOAD_IN_PROGRESS.
    broker.groups = coordinator
    await coordinator.start()


def coordinator_of(broker: Broker) -> GroupCoordinator | None:
    """The broker's coordinator, or None before attach() (handlers then answer
    COORDINATOR_NOT_AVAILABLE, which clients retry)."""
    return broker.groups
