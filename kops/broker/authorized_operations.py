"""Authorized-operations bit fields (KIP-430), as a broker without an authorizer answers them.

Metadata, DescribeCluster, DescribeGroups and DescribeTopicPartitions can carry
the operations the caller may perform on a resource: a 32-bit field with bit
`code` set for each AclOperation code. With no authorizer configured, Kafka
allows every operation the resource type supports (AuthHelper.authorizedOperations
over AclEntry.supportedOperations), and kops has no ACLs. A request that did not
ask gets the schemas' default, -2147483648 ("not requested").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["NOT_REQUESTED", "AclOperation", "Resource", "authorized_operations", "bit_field"]

NOT_REQUESTED = -(1 << 31)


class AclOperation(enum.IntEnum):
    """Kafka's AclOperation codes (org.apache.kafka.common.acl.AclOperation)."""

    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Resource(enum.Enum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


_A = AclOperation

# AclEntry.supportedOperations. CREATE_TOKENS and DESCRIBE_TOKENS belong to USER
# resources, not the cluster.
SUPPORTED: dict[Resource, frozenset[AclOperation]] = {
    Resource.TOPIC: frozenset(
        {_A.READ, _A.WRITE, _A.CREATE, _A.DESCRIBE, _A.DELETE, _A.ALTER}
        | {_A.DESCRIBE_CONFIGS, _A.ALTER_CONFIGS}
    ),
    Resource.GROUP: frozenset({_A.READ, _A.DESCRIBE, _A.DELETE}),
    Resource.CLUSTER: frozenset(
        {_A.CREATE, _A.CLUSTER_ACTION, _A.DESCRIBE_CONFIGS, _A.ALTER_CONFIGS}
        | {_A.IDEMPOTENT_WRITE, _A.ALTER, _A.DESCRIBE}
    ),
}


def bit_field(operations: Iterable[AclOperation]) -> int:
    """Kafka's Utils.to32BitField: bit `code` set for each operation."""
    field = 0
    for operation in operations:
        field |= 1 << operation
    return field


def authorized_operations(resource: Resource, requested: bool = True) -> int:
    """The field for `resource` when the request asked for it, else NOT_REQUESTED."""
    return bit_field(SUPPORTED[resource]) if requested else NOT_REQUESTED
