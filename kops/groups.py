"""Consumer groups through the Kafka admin API: list, describe (members, committed offsets,
lag), delete. No click here: ``kops group`` is a thin shell over these functions.

Works against any Kafka-protocol cluster. States use Kafka's names (``Stable``, ``Empty``,
``PreparingRebalance``, ``CompletingRebalance``, ``Dead``). The per-partition committed
offset, log end offset and lag come from :mod:`kops.recipes.lag` (the code behind ``kops
lag``), so both commands compute lag the same way: log end (high watermark) - committed.

Example::

    from kops import groups
    for g in groups.list_groups("127.0.0.1:9092"):
        print(g.group, g.state, g.protocol, g.members)
    desc = groups.describe_group("127.0.0.1:9092", "billing")
    print(desc.total_lag, [(p.partition, p.committed, p.log_end, p.lag) for p in desc.partitions])
    groups.delete_groups("127.0.0.1:9092", ["billing"])  # raises if it still has members
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import ConsumerGroupState

from kops.client import AdminSession, BrokerUnavailable, ClientSettings, KopsClientError
from kops.recipes.lag import LagMonitor, PartitionLag
from kops.recipes.offsets import MemberInfo
from kops.recipes.offsets import describe_group as describe_members

__all__ = [
    "GROUP_STATES",
    "GroupDescription",
    "GroupListing",
    "UnknownGroup",
    "delete_groups",
    "describe_group",
    "list_groups",
]

#: Kafka's state names, by confluent-kafka's enum.
_STATE_NAMES = {
    ConsumerGroupState.STABLE: "Stable",
    ConsumerGroupState.EMPTY: "Empty",
    ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
    ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    ConsumerGroupState.DEAD: "Dead",
    ConsumerGroupState.UNKNOWN: "Unknown",
}
#: The states ``list_groups(states=...)`` accepts (any case).
GROUP_STATES = ("Stable", "Empty", "PreparingRebalance", "CompletingRebalance")


class UnknownGroup(KopsClientError):
    """The consumer group does not exist (never joined and never committed, or deleted)."""


def _state_name(state: object) -> str:
    if isinstance(state, ConsumerGroupState):
        return _STATE_NAMES[state]
    return str(state)


@dataclass(frozen=True)
class GroupListing:
    group: str
    #: Kafka's state name (Stable, Empty, PreparingRebalance, CompletingRebalance, Dead).
    state: str
    #: "consumer" for groups of subscribing consumers; "" for a group that only holds
    #: offsets (committed by assign()-mode consumers or tools). librdkafka only says whether
    #: the type is empty, so another non-empty type (Connect's "connect") shows as "consumer".
    protocol_type: str
    #: The partition assignor the group agreed on (range, roundrobin, cooperative-sticky...);
    #: "" unless the group is Stable.
    protocol: str
    members: int
    #: Broker id of the group's coordinator, when known.
    coordinator: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GroupDescription:
    summary: GroupListing
    #: Live members, with client id, host and assigned partitions (empty while rebalancing).
    members: tuple[MemberInfo, ...]
    #: Every partition the group committed or has assigned, sorted: committed offset (None if
    #: never committed), log end offset (high watermark) and lag (None without a commit).
    partitions: tuple[PartitionLag, ...]

    @property
    def group(self) -> str:
        return self.summary.group

    @property
    def state(self) -> str:
        return self.summary.state

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    def owner(self, topic: str, partition: int) -> MemberInfo | None:
        return next((m for m in self.members if (topic, partition) in m.assignment), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``kops group describe --json`` prints); unlike a listing's,
        ``members`` is the list of members."""
        partitions = []
        for p in self.partitions:
            owner = self.owner(p.topic, p.partition)
            partitions.append(
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed_offset": p.committed,
                    "log_end_offset": p.log_end,
                    "lag": p.lag,
                    "member_id": owner.member_id if owner else None,
                    "client_id": owner.client_id if owner else None,
                    "host": owner.host if owner else None,
                }
            )
        return {
            **self.summary.to_dict(),
            "total_lag": self.total_lag,
            "members": [
                {
                    "member_id": m.member_id,
                    "client_id": m.client_id,
                    "host": m.host,
                    "assignment": [{"topic": t, "partition": p} for t, p in sorted(m.assignment)],
                }
                for m in self.members
            ],
            "partitions": partitions,
        }


def _listings(admin: AdminSession, group_ids: Sequence[str]) -> dict[str, GroupListing]:
    """DescribeGroups for many groups in one round."""
    if not group_ids:
        return {}
    futures = admin.client.describe_consumer_groups(
        list(group_ids), request_timeout=admin.request_timeout
    )
    out: dict[str, GroupListing] = {}
    for gid, future in futures.items():
        try:
            desc = admin.wait(future, "describe group", gid)
        except KopsClientError as exc:
            if exc.code == "GROUP_ID_NOT_FOUND":  # newer brokers (KIP-1043) say so plainly
                out[gid] = GroupListing(gid, "Dead", "", "", 0, None)
                continue
            raise
        coordinator = getattr(desc.coordinator, "id", None)
        out[gid] = GroupListing(
            group=gid,
            state=_state_name(desc.state),
            protocol_type="" if desc.is_simple_consumer_group else "consumer",
            protocol=desc.partition_assignor or "",
            members=len(desc.members or ()),
            coordinator=coordinator if coordinator is not None and coordinator >= 0 else None,
        )
    return out


def list_groups(
    target: ClientSettings | str, states: Iterable[str] | None = None
) -> list[GroupListing]:
    """Every consumer group on the cluster (optionally only those in ``states``), by name."""
    wanted = None
    if states:
        by_name = {n.lower(): s for s, n in _STATE_NAMES.items() if n in GROUP_STATES}
        try:
            wanted = {by_name[s.lower()] for s in states}
        except KeyError as exc:
            raise KopsClientError(
                f"unknown group state {exc.args[0]!r}: use one of {', '.join(GROUP_STATES)}"
            ) from None
    with AdminSession(target) as admin:
        kwargs: dict[str, Any] = {"request_timeout": admin.request_timeout}
        if wanted:
            kwargs["states"] = wanted
        result = admin.wait(admin.client.list_consumer_groups(**kwargs), "list groups")
        if result.errors:
            raise KopsClientError(f"list groups: {result.errors[0]}")
        ids = sorted({g.group_id for g in result.valid})
        listings = _listings(admin, ids)
    # A group deleted between the two requests is described as Dead: leave it out.
    return [g for g in listings.values() if g.state != "Dead"]


def describe_group(target: ClientSettings | str, group: str) -> GroupDescription:
    """State, protocol, members and per-partition committed offset / log end / lag of
    ``group``. Raises :class:`UnknownGroup` if it does not exist (Kafka describes such a
    group as Dead)."""
    settings = ClientSettings.of(target)
    with AdminSession(settings) as admin:
        summary = _listings(admin, [group])[group]
        if summary.state == "Dead":
            raise UnknownGroup(
                f"consumer group {group!r} does not exist", code="GROUP_ID_NOT_FOUND"
            )
        members = describe_members(admin, group).members
    with LagMonitor(settings, [group], window=1) as monitor:
        monitor.sample()
        (lag,) = monitor.report(time_lag=False)
    return GroupDescription(summary, members, tuple(lag.partitions))


def delete_groups(
    target: ClientSettings | str, group_ids: Iterable[str]
) -> dict[str, KopsClientError | None]:
    """Delete groups (their committed offsets go with them), each independently.

    Returns, per group, None when deleted or the error that prevented it: a group with live
    members is refused (Kafka's NON_EMPTY_GROUP), an unknown one is :class:`UnknownGroup`.
    Raises only when the cluster cannot be reached.
    """
    names = list(dict.fromkeys(group_ids))
    if not names:
        return {}
    out: dict[str, KopsClientError | None] = {}
    with AdminSession(target) as admin:
        futures = admin.client.delete_consumer_groups(names, request_timeout=admin.request_timeout)
        for gid in names:
            try:
                admin.wait(futures[gid], "delete group", gid)
            except BrokerUnavailable:
                raise
            except KopsClientError as exc:
                out[gid] = _delete_error(gid, exc)
            else:
                out[gid] = None
    return out


def _delete_error(group: str, exc: KopsClientError) -> KopsClientError:
    if exc.code == "NON_EMPTY_GROUP":
        return KopsClientError(
            f"cannot delete consumer group {group!r}: it still has active members "
            "(stop its consumers first)",
            code=exc.code,
        )
    if exc.code == "GROUP_ID_NOT_FOUND":
        return UnknownGroup(f"consumer group {group!r} does not exist", code=exc.code)
    return exc
