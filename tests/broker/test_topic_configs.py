"""Every topic config Kafka knows is accepted, checked, described and (where kops acts
on it) honoured; through real clients against a real broker."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic
from kio.schema.describe_configs import v1 as describe_v1
from kio.schema.describe_configs import v4 as describe_v4

from kops.broker.topic_configs import CATALOGUE, NOT_ACTED_NOTE
from kops.protocol.batch import iter_batches, validate_batches
from kops.protocol.client import send_request
from kops.testing import run_broker
from tests.broker.clients import consume_all, produce

# Kafka 3.7-4.0's topic configs (TopicConfig / LogConfig), written out here so that
# a name dropped from the catalogue fails this test rather than passing unseen.
KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy", "compression.type", "compression.gzip.level", "compression.lz4.level",
    "compression.zstd.level", "delete.retention.ms", "file.delete.delay.ms", "flush.messages",
    "flush.ms", "follower.replication.throttled.replicas", "index.interval.bytes",
    "leader.replication.throttled.replicas", "local.retention.bytes", "local.retention.ms",
    "max.compaction.lag.ms", "max.message.bytes", "message.downconversion.enable",
    "message.format.version", "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms", "message.timestamp.difference.max.ms",
    "message.timestamp.type", "min.cleanable.dirty.ratio", "min.compaction.lag.ms",
    "min.insync.replicas", "preallocate", "remote.storage.enable", "retention.bytes",
    "retention.ms", "segment.bytes", "segment.index.bytes", "segment.jitter.ms", "segment.ms",
    "unclean.leader.election.enable", "remote.log.copy.disable", "remote.log.delete.on.disable",
}  # fmt: skip

# A valid value, other than the default, for every one of them.
VALID = {
    "cleanup.policy": "delete,compact",
    "compression.type": "zstd",
    "compression.gzip.level": "5",
    "compression.lz4.level": "12",
    "compression.zstd.level": "-5",
    "delete.retention.ms": "1000",
    "file.delete.delay.ms": "0",
    "flush.messages": "10000",
    "flush.ms": "1000",
    "follower.replication.throttled.replicas": "0:0,1:0",
    "index.interval.bytes": "1024",
    "leader.replication.throttled.replicas": "*",
    "local.retention.bytes": "1000",
    "local.retention.ms": "60000",
    "max.compaction.lag.ms": "3600000",
    "max.message.bytes": "2000000",
    "message.downconversion.enable": "false",
    "message.format.version": "2.8",
    "message.timestamp.after.max.ms": "3600000",
    "message.timestamp.before.max.ms": "86400000",
    "message.timestamp.difference.max.ms": "86400000",
    "message.timestamp.type": "LogAppendTime",
    "min.cleanable.dirty.ratio": "0.1",
    "min.compaction.lag.ms": "1000",
    "min.insync.replicas": "2",
    "preallocate": "true",
    "remote.storage.enable": "false",
    "remote.log.copy.disable": "true",
    "remote.log.delete.on.disable": "true",
    "retention.bytes": "1048576",
    "retention.ms": "3600000",
    "segment.bytes": "1048576",
    "segment.index.bytes": "4096",
    "segment.jitter.ms": "1000",
    "segment.ms": "600000",
    "unclean.leader.election.enable": "true",
}

CODEC_IDS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# The producer's codec for each topic codec: always a different one.
PRODUCER_CODEC = {
    "gzip": "lz4",
    "zstd": "snappy",
    "lz4": "gzip",
    "snappy": "zstd",
    "uncompressed": "gzip",
}
# Broker settings the describe test expects back as STATIC_BROKER_CONFIG.
BROKER_CONFIG = {"log.retention.hours": "2", "log.cleaner.min.cleanable.ratio": "0.25"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A bundled broker of this module's own: (bootstrap, data dir)."""
    data_dir = tmp_path_factory.mktemp("topic-configs")
    with run_broker(data_dir, config=BROKER_CONFIG) as bootstrap:
        yield bootstrap, data_dir


_ADMINS: dict[str, AdminClient] = {}


def _admin(bootstrap: str) -> AdminClient:
    # Kept: librdkafka fails a request's future with _DESTROY once its client is gone.
    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    return _ADMINS[bootstrap]


def _create(bootstrap: str, name: str, config: dict[str, str]) -> None:
    _admin(bootstrap).create_topics([NewTopic(name, 1, 1, config=config)])[name].result(10)


def _describe(bootstrap: str, name: str) -> dict:
    resource = ConfigResource("topic", name)
    return _admin(bootstrap).describe_configs([resource])[resource].result(10)


def _legacy_alter(bootstrap: str, resource: ConfigResource, **kwargs: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # alter_configs is deprecated
        futures = _admin(bootstrap).alter_configs([resource], **kwargs)
    futures[resource].result(10)


def _refusal(call: object) -> tuple[str, str]:
    with pytest.raises(KafkaException) as info:
        call()  # type: ignore[operator]
    error = info.value.args[0]
    return error.name(), error.str()


def test_the_catalogue_is_kafkas_list() -> None:
    assert set(CATALOGUE) == KAFKA_TOPIC_CONFIGS
    assert set(VALID) == KAFKA_TOPIC_CONFIGS


def test_a_topic_takes_every_config_at_a_valid_value(
    broker: tuple[str, Path], topic_name: str
) -> None:
    bootstrap, _ = broker
    _create(bootstrap, topic_name, VALID)
    described = _describe(bootstrap, topic_name)
    assert set(described) == KAFKA_TOPIC_CONFIGS
    for name, value in VALID.items():
        entry = described[name]
        assert entry.value == value, name
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("segment.bytes", "13", "Value must be at least 14"),
        ("min.insync.replicas", "0", "Value must be at least 1"),
        ("compression.type", "brotli", "String must be one of: uncompressed, zstd, lz4"),
        ("compression.type", "none", "String must be one of"),  # the producer's name, not Kafka's
        ("compression.gzip.level", "0", "between 1 and 9"),
        ("compression.gzip.level", "10", "between 1 and 9"),
        ("compression.lz4.level", "18", "Value must be no more than 17"),
        ("compression.lz4.level", "0", "Value must be at least 1"),
        ("compression.zstd.level", "23", "Value must be no more than 22"),
        ("compression.zstd.level", "-131073", "Value must be at least -131072"),
        ("cleanup.policy", "delete,archive", "archive"),
        ("preallocate", "yes", "Expected value to be either true or false"),
        ("message.timestamp.type", "Now", "String must be one of: CreateTime, LogAppendTime"),
        ("retention.ms", "-2", "Value must be at least -1"),
        ("retention.ms", "soon", "Not a number of type LONG"),
        ("min.cleanable.dirty.ratio", "1.5", "Value must be no more than 1"),
        ("max.message.bytes", "2147483648", "Not a number of type INT"),
        ("leader.replication.throttled.replicas", "0-1", "literal '*'"),
        ("message.format.version", "banana", "Unknown metadata.version"),
        ("remote.storage.enable", "true", "Tiered Storage functionality is disabled"),
    ],
)
def test_a_bad_value_is_invalid_config(
    kafka_broker: str, topic_name: str, name: str, value: str, says: str
) -> None:
    code, message = _refusal(lambda: _create(kafka_broker, topic_name, {name: value}))
    assert code == "INVALID_CONFIG"
    assert says in message, message
    assert topic_name not in _admin(kafka_broker).list_topics(timeout=10).topics


def test_settings_that_contradict_each_other_are_invalid_config(
    kafka_broker: str, topic_name: str
) -> None:
    config = {"min.compaction.lag.ms": "5000", "max.compaction.lag.ms": "1000"}
    code, message = _refusal(lambda: _create(kafka_broker, topic_name, config))
    assert code == "INVALID_CONFIG"
    assert "min.compaction.lag.ms (5000) > max.compaction.lag.ms (1000)" in message


def test_an_unknown_name_is_refused(kafka_broker: str, topic_name: str) -> None:
    code, message = _refusal(lambda: _create(kafka_broker, topic_name, {"compression.typo": "x"}))
    assert code == "INVALID_CONFIG"
    assert "compression.typo" in message


def test_describe_gives_every_config_with_its_source(
    broker: tuple[str, Path], topic_name: str
) -> None:
    bootstrap, _ = broker
    _create(bootstrap, topic_name, {"segment.ms": "600000"})
    described = _describe(bootstrap, topic_name)
    assert set(described) == KAFKA_TOPIC_CONFIGS
    expected = {
        "segment.ms": ("600000", ConfigSource.DYNAMIC_TOPIC_CONFIG),
        "retention.ms": ("7200000", ConfigSource.STATIC_BROKER_CONFIG),  # log.retention.hours=2
        "min.cleanable.dirty.ratio": ("0.25", ConfigSource.STATIC_BROKER_CONFIG),
        "cleanup.policy": ("delete", ConfigSource.DEFAULT_CONFIG),
        "compression.type": ("producer", ConfigSource.DEFAULT_CONFIG),
        "flush.ms": (str((1 << 63) - 1), ConfigSource.DEFAULT_CONFIG),
        "remote.storage.enable": ("false", ConfigSource.DEFAULT_CONFIG),
    }
    for name, (value, source) in expected.items():
        assert (described[name].value, described[name].source) == (value, source.value), name
    for entry in described.values():
        assert not entry.is_read_only and not entry.is_sensitive, entry.name
    synonyms = {s.name: s.source for s in described["retention.ms"].synonyms.values()}
    assert synonyms["log.retention.hours"] == ConfigSource.STATIC_BROKER_CONFIG.value


def test_describe_v3_plus_documents_what_kops_does_not_act_on(
    broker: tuple[str, Path], topic_name: str
) -> None:
    bootstrap, _ = broker
    _create(bootstrap, topic_name, {})
    host, _, port = bootstrap.rpartition(":")
    resource = describe_v4.request.DescribeConfigsResource(
        resource_type=2, resource_name=topic_name, configuration_keys=None
    )
    request = describe_v4.DescribeConfigsRequest(
        resources=(resource,), include_synonyms=False, include_documentation=True
    )
    response = send_request(host, int(port), request, timeout=10)
    (result,) = response.results
    configs = {c.name: c for c in result.configs}
    assert set(configs) == KAFKA_TOPIC_CONFIGS
    assert NOT_ACTED_NOTE in (configs["flush.ms"].documentation or "")
    assert NOT_ACTED_NOTE in (configs["remote.storage.enable"].documentation or "")
    assert configs["retention.ms"].documentation
    assert NOT_ACTED_NOTE not in configs["retention.ms"].documentation
    assert NOT_ACTED_NOTE not in (configs["compression.type"].documentation or "")
    # Kafka's ConfigType numbers: BOOLEAN 1, STRING 2, INT 3, LONG 5, DOUBLE 6, LIST 7.
    types = {name: configs[name].config_type for name in configs}
    assert types["preallocate"] == 1 and types["compression.type"] == 2
    assert types["segment.bytes"] == 3 and types["retention.ms"] == 5
    assert types["min.cleanable.dirty.ratio"] == 6 and types["cleanup.policy"] == 7

    # v1 has no documentation field; the configs are all there all the same.
    old = describe_v1.DescribeConfigsRequest(
        resources=(
            describe_v1.request.DescribeConfigsResource(
                resource_type=2, resource_name=topic_name, configuration_keys=None
            ),
        ),
        include_synonyms=True,
    )
    (result,) = send_request(host, int(port), old, timeout=10).results
    assert {c.name for c in result.configs} == KAFKA_TOPIC_CONFIGS


def test_legacy_alter_configs_replaces_the_overrides(
    broker: tuple[str, Path], topic_name: str
) -> None:
    bootstrap, _ = broker
    _create(bootstrap, topic_name, {"retention.ms": "3600000", "segment.ms": "600000"})
    replace = ConfigResource(
        "topic", topic_name, set_config={"retention.ms": "7200001", "compression.type": "lz4"}
    )
    _legacy_alter(bootstrap, replace)
    described = _describe(bootstrap, topic_name)
    assert described["retention.ms"].value == "7200001"
    assert described["compression.type"].value == "lz4"
    assert described["compression.type"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Left out of the request: back to the default.
    assert described["segment.ms"].value == str(7 * 24 * 3600 * 1000)
    assert described["segment.ms"].source == ConfigSource.DEFAULT_CONFIG.value


def test_legacy_alter_configs_validate_only_and_bad_values_change_nothing(
    broker: tuple[str, Path], topic_name: str
) -> None:
    bootstrap, _ = broker
    _create(bootstrap, topic_name, {"retention.ms": "3600000"})
    before = {k: (v.value, v.source) for k, v in _describe(bootstrap, topic_name).items()}

    dry = ConfigResource("topic", topic_name, set_config={"segment.ms": "60000"})
    _legacy_alter(bootstrap, dry, validate_only=True)
    bad = ConfigResource("topic", topic_name, set_config={"segment.bytes": "10"})
    code, message = _refusal(lambda: _legacy_alter(bootstrap, bad))
    assert (code, "Value must be at least 14" in message) == ("INVALID_CONFIG", True)
    bad_dry = ConfigResource("topic", topic_name, set_config={"compression.type": "brotli"})
    code, _ = _refusal(lambda: _legacy_alter(bootstrap, bad_dry, validate_only=True))
    assert code == "INVALID_CONFIG"
    unknown = ConfigResource("topic", topic_name, set_config={"no.such.config": "1"})
    assert _refusal(lambda: _legacy_alter(bootstrap, unknown))[0] == "INVALID_CONFIG"

    after = {k: (v.value, v.source) for k, v in _describe(bootstrap, topic_name).items()}
    assert after == before


def test_legacy_alter_configs_refuses_read_only_broker_settings(
    broker: tuple[str, Path],
) -> None:
    # Dynamic broker configs are tests/broker/test_dynamic_broker_configs.py; node.id is not one.
    resource = ConfigResource("broker", "0", set_config={"node.id": "7"})
    code, message = _refusal(lambda: _legacy_alter(bootstrap=broker[0], resource=resource))
    assert code == "INVALID_REQUEST" and "node.id" in message


def _stored_batches(data_dir: Path, topic: str) -> list[bytes]:
    """Every batch in the partition's segment files, as the broker wrote it."""
    batches = []
    for segment in sorted((data_dir / f"{topic}-0").glob("*.log")):
        data = segment.read_bytes()
        validate_batches(data)  # lengths and CRCs as stored are right
        batches += [data[pos : pos + h.size] for pos, h in iter_batches(data)]
    return batches


def _round_trip(bootstrap: str, topic: str, **producer: object) -> None:
    records = [
        (f"key-{i}".encode(), f"value {i} ".encode() * 30, [("n", str(i).encode())])
        for i in range(200)
    ]
    produce(bootstrap, topic, records, **producer)
    messages = consume_all(bootstrap, topic, len(records))
    got = [(m.key(), m.value(), m.headers()) for m in messages]
    assert got == [(k, v, [(h, hv) for h, hv in hs]) for k, v, hs in records]


@pytest.mark.parametrize("topic_codec", list(PRODUCER_CODEC))
def test_a_topic_codec_recompresses_other_codecs(
    broker: tuple[str, Path], topic_name: str, topic_codec: str
) -> None:
    bootstrap, data_dir = broker
    _create(bootstrap, topic_name, {"compression.type": topic_codec})
    producer_codec = PRODUCER_CODEC[topic_codec]
    _round_trip(
        bootstrap, topic_name, **{"compression.type": producer_codec, "enable.idempotence": True}
    )
    stored = _stored_batches(data_dir, topic_name)
    assert stored
    assert {b[22] & 0x07 for b in stored} == {CODEC_IDS[topic_codec]}
    if topic_codec == "snappy":
        assert all(b[61:69] == b"\x82SNAPPY\x00" for b in stored)  # xerial, as Java writes
    if topic_codec == "lz4":
        assert all(b[65] & 0x20 for b in stored)  # independent blocks


@pytest.mark.parametrize("codec", ["gzip", "lz4", "snappy", "zstd", "none"])
def test_producer_keeps_each_batch_as_produced(
    broker: tuple[str, Path], topic_name: str, codec: str
) -> None:
    bootstrap, data_dir = broker
    _create(bootstrap, topic_name, {})  # compression.type=producer, the default
    _round_trip(bootstrap, topic_name, **{"compression.type": codec})
    stored = _stored_batches(data_dir, topic_name)
    assert {b[22] & 0x07 for b in stored} == {CODEC_IDS.get(codec, 0)}
    if codec == "snappy":
        assert not any(b[61:69] == b"\x82SNAPPY\x00" for b in stored)  # librdkafka's raw snappy


def test_a_matching_codec_is_stored_untouched(broker: tuple[str, Path], topic_name: str) -> None:
    bootstrap, data_dir = broker
    _create(bootstrap, topic_name, {"compression.type": "snappy"})
    _round_trip(bootstrap, topic_name, **{"compression.type": "snappy"})
    stored = _stored_batches(data_dir, topic_name)
    # librdkafka writes raw snappy; a re-compressed batch would be xerial-framed.
    assert {b[22] & 0x07 for b in stored} == {CODEC_IDS["snappy"]}
    assert not any(b[61:69] == b"\x82SNAPPY\x00" for b in stored)


def test_a_codec_set_later_applies_to_new_batches(
    broker: tuple[str, Path], topic_name: str
) -> None:
    bootstrap, data_dir = broker
    _create(bootstrap, topic_name, {})
    # Values big enough to compress: librdkafka sends a batch uncompressed otherwise.
    before, after = b"before " * 100, b"after " * 100
    produce(bootstrap, topic_name, [(b"k", before)], **{"compression.type": "gzip"})
    _legacy_alter(
        bootstrap, ConfigResource("topic", topic_name, set_config={"compression.type": "zstd"})
    )
    produce(bootstrap, topic_name, [(b"k", after)], **{"compression.type": "gzip"})
    stored = _stored_batches(data_dir, topic_name)
    assert [b[22] & 0x07 for b in stored] == [CODEC_IDS["gzip"], CODEC_IDS["zstd"]]
    assert [m.value() for m in consume_all(bootstrap, topic_name, 2)] == [before, after]
