"""DescribeCluster v1-v2 (endpoint type, fenced brokers) and the membership APIs of one broker."""

from __future__ import annotations

import uuid

from kio.schema.broker_heartbeat import v0 as heartbeat_v0
from kio.schema.broker_registration import v0 as registration_v0
from kio.schema.describe_cluster import v1, v2
from kio.schema.errors import ErrorCode

from kops.admin import ClusterBroker, describe_cluster_brokers
from tests.broker.groups.group_helpers import send_once as _send


def test_a_single_broker_lists_itself_as_broker_and_controller(kafka_broker: str) -> None:
    controller, brokers = describe_cluster_brokers(kafka_broker)
    host, port = kafka_broker.rsplit(":", 1)
    assert brokers == [ClusterBroker(controller, host, int(port), fenced=False)]


def test_the_controllers_endpoint_type_is_not_served_on_a_broker_listener(
    kafka_broker: str,
) -> None:
    for schema in (v1, v2):
        request = schema.request.DescribeClusterRequest(
            include_cluster_authorized_operations=False,
            endpoint_type=schema.request.i8(2),
            **({"include_fenced_brokers": False} if schema is v2 else {}),
        )
        response = _send(kafka_broker, request)
        assert response.error_code == ErrorCode.unsupported_endpoint_type  # type: ignore[attr-defined]
        assert response.brokers == ()  # type: ignore[attr-defined]


def test_membership_requests_to_a_broker_without_quorum_are_not_for_a_controller(
    kafka_broker: str,
) -> None:
    registration = registration_v0.BrokerRegistrationRequest(
        broker_id=7,
        cluster_id="x",
        incarnation_id=uuid.uuid4(),
        listeners=(
            registration_v0.request.Listener(
                name="PLAINTEXT", host="127.0.0.1", port=9, security_protocol=0
            ),
        ),
        features=(),
        rack=None,
    )
    assert _send(kafka_broker, registration).error_code == ErrorCode.not_controller  # type: ignore[attr-defined]
    beat = heartbeat_v0.BrokerHeartbeatRequest(
        broker_id=7, broker_epoch=1, current_metadata_offset=0, want_fence=False,
        want_shut_down=False,
    )  # fmt: skip
    assert _send(kafka_broker, beat).error_code == ErrorCode.not_controller  # type: ignore[attr-defined]
