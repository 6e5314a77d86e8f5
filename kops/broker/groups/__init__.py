"""The group coordinator: consumer groups and committed offsets.

- `group.py`: a group's members, state and protocol choice (no I/O);
- `coordinator.py`: JoinGroup/SyncGroup/Heartbeat/LeaveGroup, timers;
- `offsets.py`: OffsetCommit/OffsetFetch/OffsetDelete, list/describe/delete;
- `ownership.py`: the `__consumer_offsets` partitions served, loading and unloading them;
- `storage.py`: the `__consumer_offsets` record format and placement.
"""
