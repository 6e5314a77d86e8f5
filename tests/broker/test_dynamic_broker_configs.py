"""Dynamic broker configs, as kafka-configs --entity-type brokers --alter sets them.

Through confluent-kafka's admin client: per-broker and cluster-wide values,
their sources in DescribeConfigs, topic defaults that follow them at once,
persistence across a restart, and Kafka's refusals.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
)
from kio.schema.describe_configs.v4 import request as describe
from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs.v1 import request as alter

from kops.testing import run_broker
from tests.broker.clients import create_topic
from tests.broker.groups.group_helpers import send_once as _raw

BROKER = "0"
_ADMINS: dict[str, AdminClient] = {}


def _admin(bootstrap: str) -> AdminClient:
    # Kept: librdkafka fails a request's future with _DESTROY once its client is gone.
    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    return _ADMINS[bootstrap]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "broker"


@pytest.fixture
def bootstrap(data_dir: Path) -> Iterator[str]:
    with run_broker(data_dir) as address:
        try:
            yield address
        finally:
            _ADMINS.pop(address, None)


def _raw_set(bootstrap: str, resource: str, key: str, value: str) -> Any:
    """IncrementalAlterConfigs SET as a raw request: confluent-kafka refuses the empty
    name of the cluster-wide default, and routes a broker resource to that broker."""
    answer = _raw(
        bootstrap,
        alter.IncrementalAlterConfigsRequest(
            resources=(
                alter.AlterConfigsResource(
                    resource_type=4,
                    resource_name=resource,
                    configs=(alter.AlterableConfig(name=key, config_operation=0, value=value),),
                ),
            ),
            validate_only=False,
        ),
    )
    [result] = answer.responses
    return result


def _incremental(bootstrap: str, name: str, *entries: ConfigEntry, validate: bool = False) -> None:
    resource = ConfigResource("broker", name, incremental_configs=list(entries))
    futures = _admin(bootstrap).incremental_alter_configs([resource], validate_only=validate)
    futures[resource].result(10)


def _set(key: str, value: str) -> ConfigEntry:
    return ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)


def _delete(key: str) -> ConfigEntry:
    return ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE)


def _describe(bootstrap: str, kind: str, name: str) -> dict[str, ConfigEntry]:
    resource = ConfigResource(kind, name)
    futures = _admin(bootstrap).describe_configs([resource])
    return futures[resource].result(10)


def _refused(call: object) -> tuple[str, str]:
    with pytest.raises(KafkaException) as info:
        call()  # type: ignore[operator]
    error = info.value.args[0]
    return error.name(), error.str()


def test_a_per_broker_value_applies_at_once_and_topics_follow(
    bootstrap: str, topic_name: str
) -> None:
    create_topic(bootstrap, topic_name)
    _incremental(bootstrap, BROKER, _set("log.retention.ms", "3600000"))
    entry = _describe(bootstrap, "broker", BROKER)["log.retention.ms"]
    assert (entry.value, entry.source) == ("3600000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    assert not entry.is_read_only
    topic = _describe(bootstrap, "topic", topic_name)["retention.ms"]
    assert (topic.value, topic.source) == ("3600000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)

    _incremental(bootstrap, BROKER, _delete("log.retention.ms"))
    topic = _describe(bootstrap, "topic", topic_name)["retention.ms"]
    assert (topic.value, topic.source) == ("604800000", ConfigSource.DEFAULT_CONFIG.value)


def test_the_cluster_default_is_overridden_per_broker(bootstrap: str) -> None:
    assert _raw_set(bootstrap, "", "log.cleaner.threads", "2").error_code == 0
    described = _raw(
        bootstrap,
        describe.DescribeConfigsRequest(
            resources=(
                describe.DescribeConfigsResource(
                    resource_type=4, resource_name="", configuration_keys=None
                ),
            ),
            include_synonyms=False,
            include_documentation=False,
        ),
    )
    [result] = described.results
    assert [(c.name, c.value, c.config_source) for c in result.configs] == [
        ("log.cleaner.threads", "2", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    ]
    entry = _describe(bootstrap, "broker", BROKER)["log.cleaner.threads"]
    assert (entry.value, entry.source) == ("2", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    _incremental(bootstrap, BROKER, _set("log.cleaner.threads", "3"))
    entry = _describe(bootstrap, "broker", BROKER)["log.cleaner.threads"]
    assert (entry.value, entry.source) == ("3", ConfigSource.DYNAMIC_BROKER_CONFIG.value)


def test_dynamic_values_survive_a_restart(data_dir: Path) -> None:
    with run_broker(data_dir) as bootstrap:
        _incremental(bootstrap, BROKER, _set("message.max.bytes", "2000000"))
        _ADMINS.pop(bootstrap)
    with run_broker(data_dir) as bootstrap:
        entry = _describe(bootstrap, "broker", BROKER)["message.max.bytes"]
        _ADMINS.pop(bootstrap)
        assert (entry.value, entry.source) == ("2000000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)


def test_validate_only_changes_nothing(bootstrap: str) -> None:
    _incremental(bootstrap, BROKER, _set("log.retention.ms", "1000"), validate=True)
    entry = _describe(bootstrap, "broker", BROKER)["log.retention.ms"]
    assert entry.source != ConfigSource.DYNAMIC_BROKER_CONFIG.value


def test_read_only_settings_another_broker_and_bad_values_are_refused(bootstrap: str) -> None:
    code, message = _refused(lambda: _incremental(bootstrap, BROKER, _set("node.id", "3")))
    assert code == "INVALID_REQUEST" and "Cannot update these configs dynamically" in message
    assert _describe(bootstrap, "broker", BROKER)["node.id"].is_read_only
    other = _raw_set(bootstrap, "5", "log.cleaner.threads", "2")
    assert other.error_code == ErrorCode.invalid_request
    assert "Unexpected broker id" in (other.error_message or "")
    code, _ = _refused(lambda: _incremental(bootstrap, BROKER, _set("log.retention.ms", "soon")))
    assert code == "INVALID_CONFIG"


def test_legacy_alter_configs_replaces_the_whole_set(bootstrap: str) -> None:
    admin = _admin(bootstrap)

    def legacy(**configs: str) -> None:
        resource = ConfigResource("broker", BROKER, set_config=configs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            admin.alter_configs([resource])[resource].result(10)

    legacy(**{"log.cleaner.threads": "2", "sasl.kerberos.min.time.before.relogin": "58000"})
    legacy(**{"sasl.kerberos.min.time.before.relogin": "60000"})
    described = _describe(bootstrap, "broker", BROKER)
    dynamic = {
        k: e.value
        for k, e in described.items()
        if e.source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    }
    assert dynamic == {"sasl.kerberos.min.time.before.relogin": "60000"}


def test_append_and_subtract_start_from_the_value_in_force(bootstrap: str) -> None:
    # librdkafka's 0081 does exactly this on a broker resource.
    append = ConfigEntry(
        "log.cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND
    )
    _incremental(bootstrap, BROKER, append)
    assert _describe(bootstrap, "broker", BROKER)["log.cleanup.policy"].value == "delete,compact"
    subtract = ConfigEntry(
        "log.cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SUBTRACT
    )
    _incremental(bootstrap, BROKER, subtract)
    assert _describe(bootstrap, "broker", BROKER)["log.cleanup.policy"].value == "delete"
