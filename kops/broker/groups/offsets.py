"""Committed offsets and group administration, as a mixin of GroupCoordinator.

Offsets follow Kafka's rules (`GroupCoordinator.handleCommitOffsets`):

- a group unknown to the coordinator accepts commits only with generation -1
  (an assign()-style "simple" consumer storing offsets); any other generation
  is a stale one;
- an Empty group accepts generation -1 commits from anyone;
- otherwise the member must be known, not a fenced static instance, and in
  the current generation; during CompletingRebalance commits get
  REBALANCE_IN_PROGRESS (the member has not received its assignment yet),
  during PreparingRebalance they are still accepted (the member learns about
  the rebalance from its next heartbeat).

The empty group id is valid for OffsetCommit, OffsetFetch, DescribeGroups and
DeleteGroups, as in Kafka (see GroupCoordinator.precheck).

An offset is visible to OffsetFetch only once its record is in
`__consumer_offsets`, so a reply never reports an offset a restart would lose.
Offsets of groups that stay Empty for `offsets.retention.minutes` expire, and
a group with no members and no offsets left is removed. Expiry and a topic's
deletion touch only the groups loaded (those of the offsets partitions this
coordinator owns); each partition's leader does the same for its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from kops.broker.groups.group import Group, GroupState, Member, OffsetEntry, now_ms
from kops.broker.groups.storage import group_key, offset_key, offset_value, write_error

if TYPE_CHECKING:
    from kops.broker.cluster.view import ClusterView
    from kops.broker.groups.storage import OffsetsTopic

log = logging.getLogger("kops.broker.groups")

S = GroupState

# Kafka's name for the type of group this coordinator runs (Group.GroupType.CLASSIC).
GROUP_TYPE = "classic"

# (topic, partition, offset, leader_epoch, metadata)
CommitOffset = tuple[str, int, int, int, str | None]


@dataclass(slots=True)
class FetchedOffset:
    topic: str
    partition: int
    entry: OffsetEntry | None
    error: ErrorCode = ErrorCode.none


@dataclass(slots=True)
class GroupSummary:
    error: ErrorCode
    group_id: str
    state: str
    protocol_type: str
    protocol_name: str
    members: list[Member]
    # Stable groups report each member's subscription and assignment; others
    # do not, since a rebalance is replacing them (as Kafka does).
    with_metadata: bool


class OffsetsMixin:
    # Provided by GroupCoordinator.
    broker: ClusterView
    groups: dict[str, Group]
    store: OffsetsTopic
    metadata_max_bytes: int
    loading: bool
    retention_ms: int
    retention_check_ms: int

    def precheck(self, group_id: str | None, *, allow_empty: bool = False) -> ErrorCode:
        raise NotImplementedError

    def _schedule_expiry(
        self, group: Group, member: Member, timeout_ms: int | None = None
    ) -> None: ...

    # ---- OffsetCommit -----------------------------------------------------------
    def _partition_exists(self, topic: str, partition: int) -> bool:
        """In the cluster's metadata: in a cluster the partition may be hosted elsewhere."""
        record = self.broker.topic(topic)
        return record is not None and 0 <= partition < record.partitions

    def commit_offsets(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        offsets: Sequence[CommitOffset],
    ) -> list[ErrorCode]:
        """Store offsets; returns one error code per offset, in request order."""
        error = self.precheck(group_id, allow_empty=True)
        group = self.groups.get(group_id)
        created = False
        if not error and group is None:
            if generation < 0:
                group = self.groups[group_id] = Group(group_id)
                created = True
            else:
                error = ErrorCode.illegal_generation
        if not error:
            assert group is not None
            error = self._commit_allowed(group, generation, member_id, instance_id)
        if error:
            return [error] * len(offsets)
        assert group is not None
        errors, stored = self._store_offsets(group, created, offsets)
        group.offsets.update(stored)
        return errors

    def _store_offsets(
        self,
        group: Group,
        created: bool,
        offsets: Sequence[CommitOffset],
        producer: tuple[int, int] | None = None,
    ) -> tuple[list[ErrorCode], dict[tuple[str, int], OffsetEntry]]:
        """Check `offsets` and write those accepted to the group's partition (in a
        transactional batch of `producer`'s, when given). Returns one error code per
        offset and the entries written, none if the write failed; a group created for
        this commit that ends up with nothing written is dropped again."""
        errors, accepted = self._accept_offsets(offsets)
        if accepted:
            records = [
                (offset_key(group.group_id, t, p), offset_value(e))
                for (t, p), e in accepted.items()
            ]
            try:
                self.store.write(group.group_id, records, producer=producer)
            except Exception as exc:
                what = "transactional offsets" if producer is not None else "offsets"
                failed = write_error(exc, f"store {what} of group {group.group_id}")
                errors = [failed if e == ErrorCode.none else e for e in errors]
                accepted = {}
        if created and not accepted:
            del self.groups[group.group_id]
        return errors, accepted

    def _accept_offsets(
        self, offsets: Sequence[CommitOffset]
    ) -> tuple[list[ErrorCode], dict[tuple[str, int], OffsetEntry]]:
        """One error code per offset (OFFSET_METADATA_TOO_LARGE, UNKNOWN_TOPIC_OR_PARTITION
        or NONE), and the entries of those accepted, stamped now."""
        errors: list[ErrorCode] = []
        accepted: dict[tuple[str, int], OffsetEntry] = {}
        now = now_ms()
        for topic, partition, offset, epoch, metadata in offsets:
            if metadata is not None and len(metadata.encode()) > self.metadata_max_bytes:
                errors.append(ErrorCode.offset_metadata_too_large)
            elif not self._partition_exists(topic, partition):
                errors.append(ErrorCode.unknown_topic_or_partition)
            else:
                errors.append(ErrorCode.none)
                accepted[(topic, partition)] = OffsetEntry(offset, epoch, metadata or "", now)
        return errors, accepted

    def _commit_allowed(
        self, group: Group, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        if group.is_(S.DEAD):
            return ErrorCode.coordinator_not_available
        if group.is_static_member_fenced(member_id, instance_id):
            return ErrorCode.fenced_instance_id
        if generation < 0 and group.is_(S.EMPTY):
            return ErrorCode.none
        member = group.members.get(member_id)
        if member is None:
            return ErrorCode.unknown_member_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        if group.is_(S.COMPLETING_REBALANCE):
            return ErrorCode.rebalance_in_progress
        # A commit proves the member alive, like a heartbeat.
        self._schedule_expiry(group, member)
        return ErrorCode.none

    # ---- OffsetFetch --------------------------------------------------------------
    def fetch_offsets(
        self,
        group_id: str,
        topics: Sequence[tuple[str, Sequence[int]]] | None,
        *,
        require_stable: bool = False,
    ) -> tuple[ErrorCode, list[FetchedOffset]]:
        """Committed offsets of the given partitions, or of all (topics None).

        With `require_stable` (OffsetFetch v7+, KIP-447), a partition for which
        an open transaction holds an offset (TxnOffsetCommit) answers
        UNSTABLE_OFFSET_COMMIT and no offset, so a read_committed consumer
        retries instead of starting from the offset that transaction replaces.
        "All" lists the committed partitions only, as Kafka's does.
        """
        error = self.precheck(group_id, allow_empty=True)
        if error:
            return error, []
        group = self.groups.get(group_id)
        offsets = group.offsets if group is not None else {}
        unstable: set[tuple[str, int]] = set()
        if require_stable and group is not None:
            for pending in group.pending_txn_offsets.values():
                unstable.update(pending)
        if topics is None:
            wanted = sorted(offsets)
        else:
            wanted = [(topic, p) for topic, partitions in topics for p in partitions]
        return ErrorCode.none, [
            FetchedOffset(t, p, None, ErrorCode.unstable_offset_commit)
            if (t, p) in unstable
            else FetchedOffset(t, p, offsets.get((t, p)))
            for t, p in wanted
        ]

    # ---- OffsetDelete ---------------------------------------------------------------
    def delete_offsets(
        self, group_id: str, topics: Sequence[tuple[str, Sequence[int]]]
    ) -> tuple[ErrorCode, list[tuple[str, int, ErrorCode]]]:
        error = self.precheck(group_id)
        if error:
            return error, []
        group = self.groups.get(group_id)
        if group is None or group.is_(S.DEAD):
            return ErrorCode.group_id_not_found, []
        subscribed: set[str] = set()
        if not group.is_(S.EMPTY):
            found = group.subscribed_topics()
            if found is None:
                # Without readable subscriptions no topic can be proven unused.
                return ErrorCode.non_empty_group, []
            subscribed = found
        results: list[tuple[str, int, ErrorCode]] = []
        doomed: list[tuple[str, int]] = []
        for topic, partitions in topics:
            for partition in partitions:
                if topic in subscribed:
                    results.append((topic, partition, ErrorCode.group_subscribed_to_topic))
                elif not self._partition_exists(topic, partition):
                    results.append((topic, partition, ErrorCode.unknown_topic_or_partition))
                else:
                    results.append((topic, partition, ErrorCode.none))
                    if (topic, partition) in group.offsets:
                        doomed.append((topic, partition))
        if doomed:
            try:
                self.store.write(group_id, [(offset_key(group_id, t, p), None) for t, p in doomed])
            except Exception as exc:
                return write_error(exc, f"delete offsets of group {group_id}"), []
            for tp in doomed:
                group.offsets.pop(tp, None)
        return ErrorCode.none, results

    # ---- ListGroups / DescribeGroups / DeleteGroups -----------------------------------
    def list_groups(
        self, states: Iterable[str] = (), types: Iterable[str] = ()
    ) -> tuple[ErrorCode, list[tuple[str, str, str, str]]]:
        """(group id, protocol type, state, group type) of the groups in one of `states`
        and of one of `types` (an empty filter keeps all).

        As Kafka's GroupMetadataManager.listGroups: state names match in any case
        and with surrounding blanks; type names in any case. Every kops group is a
        classic one, so a filter naming only other types ("consumer", "share",
        "streams" or unknown ones) lists none.
        """
        if self.loading:
            return ErrorCode.coordinator_load_in_progress, []
        wanted_states = {s.strip().lower() for s in states}
        wanted_types = {t.lower() for t in types}
        if wanted_types and GROUP_TYPE not in wanted_types:
            return ErrorCode.none, []
        listed = []
        for group in self.groups.values():
            if group.is_(S.DEAD):
                continue
            if wanted_states and group.state.value.lower() not in wanted_states:
                continue
            listed.append(
                (group.group_id, group.protocol_type or "", group.state.value, GROUP_TYPE)
            )
        return ErrorCode.none, listed

    def describe_group(self, group_id: str) -> GroupSummary:
        error = self.precheck(group_id, allow_empty=True)
        group = self.groups.get(group_id)
        if error or group is None:
            return GroupSummary(error, group_id, S.DEAD.value, "", "", [], False)
        stable = group.is_(S.STABLE)
        return GroupSummary(
            ErrorCode.none,
            group_id,
            group.state.value,
            group.protocol_type or "",
            (group.protocol_name or "") if stable else "",
            list(group.members.values()),
            stable,
        )

    def delete_groups(self, group_ids: Sequence[str]) -> list[tuple[str, ErrorCode]]:
        return [(group_id, self._delete_group(group_id)) for group_id in group_ids]

    def _delete_group(self, group_id: str) -> ErrorCode:
        error = self.precheck(group_id, allow_empty=True)
        if error:
            return error
        group = self.groups.get(group_id)
        if group is None or group.is_(S.DEAD):
            return ErrorCode.group_id_not_found
        if not group.is_(S.EMPTY):
            return ErrorCode.non_empty_group
        return self._remove_group(group)

    def _remove_group(self, group: Group) -> ErrorCode:
        """Tombstone an Empty group's offsets and metadata and forget it."""
        gid = group.group_id
        records = [(offset_key(gid, t, p), None) for t, p in group.offsets]
        records.append((group_key(gid), None))
        try:
            self.store.write(gid, records)
        except Exception as exc:
            return write_error(exc, f"delete group {gid}")
        group.cancel_timers()
        group.pending.clear()
        group.transition(S.DEAD)
        del self.groups[gid]
        log.info("deleted group %s", gid)
        return ErrorCode.none

    # ---- retention ------------------------------------------------------------------
    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retention_check_ms / 1000)
            try:
                self.expire_offsets(now_ms())
            except Exception:
                log.exception("offset expiration failed")

    def expire_offsets(self, now: int) -> None:
        """KIP-211: offsets of a group expire once it has been Empty for the
        retention period; offsets of topics that no longer exist go at once."""
        for group in list(self.groups.values()):
            expired = [(t, p) for t, p in group.offsets if self.broker.topic(t) is None]
            if group.is_(S.EMPTY) and not group.pending:
                expired += [
                    tp
                    for tp, entry in group.offsets.items()
                    if max(entry.commit_timestamp, group.state_timestamp) + self.retention_ms <= now
                ]
            if group.is_(S.EMPTY) and not group.pending and len(set(expired)) == len(group.offsets):
                # Nothing left worth keeping: drop the group with its offsets.
                self._remove_group(group)
            elif expired:
                self._delete_offsets(group, sorted(set(expired)))

    def on_topic_deleted(self, topic: str) -> None:
        """Forget every group's offsets of a deleted topic (a hook for Broker.delete_topic),
        so a topic re-created under the same name starts without stale commits."""
        for group in list(self.groups.values()):
            doomed = [(t, p) for t, p in group.offsets if t == topic]
            if doomed:
                self._delete_offsets(group, doomed)

    def _delete_offsets(self, group: Group, partitions: list[tuple[str, int]]) -> None:
        gid = group.group_id
        try:
            self.store.write(gid, [(offset_key(gid, t, p), None) for t, p in partitions])
        except Exception as exc:
            write_error(exc, f"delete offsets of group {gid}")
            return
        for tp in partitions:
            group.offsets.pop(tp, None)
