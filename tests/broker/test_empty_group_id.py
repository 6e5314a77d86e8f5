"""The empty group id "", as Kafka's group coordinator treats it.

Kafka (GroupCoordinator.isValidGroupId, and the null-only checks of
GroupCoordinatorService that replaced it): OffsetCommit, OffsetFetch,
DescribeGroups and DeleteGroups accept "" ("for backwards compatibility"; only
a null id is INVALID_GROUP_ID); JoinGroup, SyncGroup, Heartbeat, LeaveGroup
and OffsetDelete answer INVALID_GROUP_ID. FindCoordinator places "" like any
other key. No client library sends "", so these are raw requests, on a broker
of the test's own (the group "" is broker-wide state).
"""

from __future__ import annotations

import datetime

from kio.schema.delete_groups import v1 as delete_groups_v1
from kio.schema.describe_groups import v0 as describe_groups_v0
from kio.schema.describe_groups import v4 as describe_groups_v4
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator import v2 as find_coordinator_v2
from kio.schema.heartbeat import v3 as heartbeat_v3
from kio.schema.join_group import v0 as join_group_v0
from kio.schema.join_group import v5 as join_group_v5
from kio.schema.leave_group import v3 as leave_group_v3
from kio.schema.list_groups import v4 as list_groups_v4
from kio.schema.offset_commit import v2 as offset_commit_v2
from kio.schema.offset_commit import v7 as offset_commit_v7
from kio.schema.offset_delete import v0 as offset_delete_v0
from kio.schema.offset_fetch import v1 as offset_fetch_v1
from kio.schema.offset_fetch import v5 as offset_fetch_v5
from kio.schema.sync_group import v3 as sync_group_v3

from kops.protocol.client import send_request
from tests.broker.clients import create_topic

TOPIC = "empty-group-topic"
SECONDS = datetime.timedelta(seconds=1)


def raw(bootstrap: str, request: object) -> object:
    host, _, port = bootstrap.rpartition(":")
    return send_request(host, int(port), request, timeout=10)  # type: ignore[arg-type]


def commit_v7(bootstrap: str, offset: int, generation: int = -1, member: str = "") -> ErrorCode:
    request = offset_commit_v7.OffsetCommitRequest(
        group_id="",
        generation_id_or_member_epoch=generation,
        member_id=member,
        group_instance_id=None,
        topics=(
            offset_commit_v7.request.OffsetCommitRequestTopic(
                name=TOPIC,
                partitions=(
                    offset_commit_v7.request.OffsetCommitRequestPartition(
                        partition_index=0,
                        committed_offset=offset,
                        committed_leader_epoch=-1,
                        committed_metadata="meta",
                    ),
                ),
            ),
        ),
    )
    ((partition,),) = [t.partitions for t in raw(bootstrap, request).topics]  # type: ignore[attr-defined]
    return partition.error_code  # type: ignore[no-any-return]


def fetch_v5(bootstrap: str) -> tuple[ErrorCode, int]:
    request = offset_fetch_v5.OffsetFetchRequest(
        group_id="",
        topics=(
            offset_fetch_v5.request.OffsetFetchRequestTopic(name=TOPIC, partition_indexes=(0,)),
        ),
    )
    response = raw(bootstrap, request)
    ((partition,),) = [t.partitions for t in response.topics]  # type: ignore[attr-defined]
    assert partition.error_code == ErrorCode.none
    return response.error_code, partition.committed_offset  # type: ignore[attr-defined]


def describe(bootstrap: str) -> tuple[ErrorCode, str, str]:
    response = raw(
        bootstrap,
        describe_groups_v4.DescribeGroupsRequest(groups=("",), include_authorized_operations=False),
    )
    (group,) = response.groups  # type: ignore[attr-defined]
    assert group.group_id == ""
    return group.error_code, group.group_state, group.protocol_type


def test_offset_apis_accept_the_empty_group_id(fresh_kafka_broker: str) -> None:
    bootstrap = fresh_kafka_broker
    create_topic(bootstrap, TOPIC)

    # FindCoordinator places "" like any key.
    found = raw(bootstrap, find_coordinator_v2.FindCoordinatorRequest(key="", key_type=0))
    assert found.error_code == ErrorCode.none and found.node_id >= 0  # type: ignore[attr-defined]

    # Before any commit: nothing committed, and "" described as a Dead group, no error.
    assert fetch_v5(bootstrap) == (ErrorCode.none, -1)
    assert describe(bootstrap) == (ErrorCode.none, "Dead", "")
    # A generation of a group that does not exist is a stale one.
    assert commit_v7(bootstrap, 1, generation=3, member="m") == ErrorCode.illegal_generation

    # A simple commit (generation -1) stores offsets under "", v7 and v2 alike.
    assert commit_v7(bootstrap, 4) == ErrorCode.none
    assert fetch_v5(bootstrap) == (ErrorCode.none, 4)
    old = offset_commit_v2.OffsetCommitRequest(
        group_id="",
        generation_id_or_member_epoch=-1,
        member_id="",
        retention_time=datetime.timedelta(milliseconds=-1),
        topics=(
            offset_commit_v2.request.OffsetCommitRequestTopic(
                name=TOPIC,
                partitions=(
                    offset_commit_v2.request.OffsetCommitRequestPartition(
                        partition_index=0, committed_offset=7, committed_metadata=None
                    ),
                ),
            ),
        ),
    )
    ((partition,),) = [t.partitions for t in raw(bootstrap, old).topics]  # type: ignore[attr-defined]
    assert partition.error_code == ErrorCode.none
    # OffsetFetch v1 (per-partition errors only) reads it back too.
    v1_request = offset_fetch_v1.OffsetFetchRequest(
        group_id="",
        topics=(
            offset_fetch_v1.request.OffsetFetchRequestTopic(name=TOPIC, partition_indexes=(0,)),
        ),
    )
    ((fetched,),) = [t.partitions for t in raw(bootstrap, v1_request).topics]  # type: ignore[attr-defined]
    assert (fetched.error_code, fetched.committed_offset) == (ErrorCode.none, 7)
    # v2+ with topics null: every committed partition.
    everything = raw(bootstrap, offset_fetch_v5.OffsetFetchRequest(group_id="", topics=None))
    assert [(t.name, [p.committed_offset for p in t.partitions]) for t in everything.topics] == [  # type: ignore[attr-defined]
        (TOPIC, [7])
    ]

    # The group now exists, Empty, and is listed and described like any other.
    assert describe(bootstrap) == (ErrorCode.none, "Empty", "")
    old_describe = raw(bootstrap, describe_groups_v0.DescribeGroupsRequest(groups=("",)))
    assert [(g.group_id, g.error_code, g.group_state) for g in old_describe.groups] == [  # type: ignore[attr-defined]
        ("", ErrorCode.none, "Empty")
    ]
    listed = raw(bootstrap, list_groups_v4.ListGroupsRequest(states_filter=()))
    assert ("", "Empty") in [(g.group_id, g.group_state) for g in listed.groups]  # type: ignore[attr-defined]
    # An Empty group takes generation -1 commits from anyone, not other generations.
    assert commit_v7(bootstrap, 8, generation=1, member="m") == ErrorCode.unknown_member_id

    # DeleteGroups takes "" too: deleted once, then unknown.
    for expected in (ErrorCode.none, ErrorCode.group_id_not_found):
        response = raw(bootstrap, delete_groups_v1.DeleteGroupsRequest(groups_names=("",)))
        assert [(r.group_id, r.error_code) for r in response.results] == [("", expected)]  # type: ignore[attr-defined]
    assert fetch_v5(bootstrap) == (ErrorCode.none, -1)
    assert describe(bootstrap) == (ErrorCode.none, "Dead", "")


def test_membership_apis_refuse_the_empty_group_id(fresh_kafka_broker: str) -> None:
    bootstrap = fresh_kafka_broker
    create_topic(bootstrap, TOPIC)
    protocols = (join_group_v5.request.JoinGroupRequestProtocol(name="range", metadata=b""),)
    join = join_group_v5.JoinGroupRequest(
        group_id="",
        session_timeout=10 * SECONDS,
        rebalance_timeout=10 * SECONDS,
        member_id="",
        group_instance_id=None,
        protocol_type="consumer",
        protocols=protocols,
    )
    assert raw(bootstrap, join).error_code == ErrorCode.invalid_group_id  # type: ignore[attr-defined]
    join_v0 = join_group_v0.JoinGroupRequest(
        group_id="",
        session_timeout=10 * SECONDS,
        member_id="",
        protocol_type="consumer",
        protocols=(join_group_v0.request.JoinGroupRequestProtocol(name="range", metadata=b""),),
    )
    assert raw(bootstrap, join_v0).error_code == ErrorCode.invalid_group_id  # type: ignore[attr-defined]
    sync = sync_group_v3.SyncGroupRequest(
        group_id="", generation_id=1, member_id="m", group_instance_id=None, assignments=()
    )
    assert raw(bootstrap, sync).error_code == ErrorCode.invalid_group_id  # type: ignore[attr-defined]
    heartbeat = heartbeat_v3.HeartbeatRequest(
        group_id="", generation_id=1, member_id="m", group_instance_id=None
    )
    assert raw(bootstrap, heartbeat).error_code == ErrorCode.invalid_group_id  # type: ignore[attr-defined]
    leave = leave_group_v3.LeaveGroupRequest(
        group_id="",
        members=(leave_group_v3.request.MemberIdentity(member_id="m", group_instance_id=None),),
    )
    assert raw(bootstrap, leave).error_code == ErrorCode.invalid_group_id  # type: ignore[attr-defined]
    # OffsetDelete is not among the offset APIs Kafka keeps open to "".
    assert commit_v7(bootstrap, 3) == ErrorCode.none
    delete = offset_delete_v0.OffsetDeleteRequest(
        group_id="",
        topics=(
            offset_delete_v0.request.OffsetDeleteRequestTopic(
                name=TOPIC,
                partitions=(
                    offset_delete_v0.request.OffsetDeleteRequestPartition(partition_index=0),
                ),
            ),
        ),
    )
    assert raw(bootstrap, delete).error_code == ErrorCode.invalid_group_id  # type: ignore[attr-defined]
    assert fetch_v5(bootstrap) == (ErrorCode.none, 3)
