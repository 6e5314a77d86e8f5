"""Offsets committed inside a transaction (TxnOffsetCommit), as a mixin of GroupCoordinator.

Kafka's rules (GroupMetadataManager, KIP-98 and KIP-447):

- the offsets are written to the group's `__consumer_offsets` partition at once,
  in a transactional batch of the producer's, but stay *pending*: OffsetFetch
  does not return them, and with require_stable it answers
  UNSTABLE_OFFSET_COMMIT for a partition with pending offsets (KIP-447);
- when the transaction coordinator writes the producer's marker to that
  partition, a commit makes them the group's committed offsets and an abort
  drops them (`transaction_completed`);
- generation -1 commits without membership checks (the producer is not the
  consumer); otherwise the member and generation are checked as for OffsetCommit
  (KIP-447's group metadata in send_offsets_to_transaction).

A reload replays the same: records of a transaction without its marker come
back pending (kops.broker.groups.storage).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from kops.broker.groups.group import Group, OffsetEntry

if TYPE_CHECKING:
    from kops.broker.groups.offsets import CommitOffset
    from kops.broker.groups.storage import OffsetsTopic

log = logging.getLogger("kops.broker.groups")


class TxnOffsetsMixin:
    # Provided by GroupCoordinator.
    groups: dict[str, Group]
    store: OffsetsTopic

    if TYPE_CHECKING:
        # GroupCoordinator's and OffsetsMixin's, which come first in its bases.
        def precheck(self, group_id: str | None, *, allow_empty: bool = False) -> ErrorCode: ...

        def _commit_allowed(
            self, group: Group, generation: int, member_id: str, instance_id: str | None
        ) -> ErrorCode: ...

        def _store_offsets(
            self,
            group: Group,
            created: bool,
            offsets: Sequence[CommitOffset],
            producer: tuple[int, int] | None = None,
        ) -> tuple[list[ErrorCode], dict[tuple[str, int], OffsetEntry]]: ...

    def commit_transactional_offsets(
        self,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        generation: int,
        member_id: str,
        instance_id: str | None,
        offsets: Sequence[CommitOffset],
    ) -> list[ErrorCode]:
        """TxnOffsetCommit: one error code per offset, in request order."""
        error = self.precheck(group_id)
        group = self.groups.get(group_id)
        created = False
        if not error and group is None:
            group = self.groups[group_id] = Group(group_id)
            created = True
        if not error and generation >= 0:
            assert group is not None
            error = self._commit_allowed(group, generation, member_id, instance_id)
        if error:
            if created:
                del self.groups[group_id]
            return [error] * len(offsets)
        assert group is not None
        errors, stored = self._store_offsets(
            group, created, offsets, producer=(producer_id, producer_epoch)
        )
        if stored:
            group.pending_txn_offsets.setdefault(producer_id, {}).update(stored)
        return errors

    def transaction_completed(self, index: int, producer_id: int, commit: bool) -> None:
        """The producer's marker is in offsets partition `index`: its offsets there
        become committed (commit) or are dropped (abort)."""
        for group_id, group in self.groups.items():
            if self.store.partition_for(group_id) != index:
                continue
            pending = group.pending_txn_offsets.pop(producer_id, None)
            if pending and commit:
                group.offsets.update(pending)

    def has_pending_offsets(self, group_id: str, topic: str, partition: int) -> bool:
        """Whether a transaction holds an offset for the partition that is not yet
        committed or aborted (OffsetFetch's UNSTABLE_OFFSET_COMMIT, KIP-447)."""
        group = self.groups.get(group_id)
        if group is None:
            return False
        return any((topic, partition) in p for p in group.pending_txn_offsets.values())
