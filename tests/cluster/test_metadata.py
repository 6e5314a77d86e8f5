"""The metadata records' codec, MetadataImage.apply's refusals, and image snapshots."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kops.broker.cluster.metadata import (
    BrokerInfo,
    ChangePartition,
    ChangeTopicConfigs,
    CreatePartition,
    CreateTopic,
    FenceBroker,
    MetadataError,
    MetadataImage,
    MetadataRecord,
    PartitionInfo,
    RegisterBroker,
    RemoveTopic,
    TopicInfo,
    UnfenceBroker,
    decode_records,
    encode_records,
)

# ---- the codec ----------------------------------------------------------------------------

_ints = st.integers(-(2**63), 2**63 - 1)
_ids = st.tuples() | st.lists(_ints, max_size=5).map(tuple)
_configs = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4).map(
    lambda d: tuple(sorted(d.items()))
)
_record: st.SearchStrategy[MetadataRecord] = st.one_of(
    st.builds(RegisterBroker, _ints, st.text(), _ints, st.text(), _ints),
    st.builds(FenceBroker, _ints, _ints),
    st.builds(UnfenceBroker, _ints, _ints),
    st.builds(CreateTopic, st.text(), st.text(), _configs),
    st.builds(CreatePartition, st.text(), _ints, _ids, _ids, _ints, _ints, _ints),
    st.builds(ChangePartition, st.text(), _ints, _ids, _ints, _ints, _ints),
    st.builds(RemoveTopic, st.text()),
)


@given(st.lists(_record, max_size=8))
def test_records_round_trip_to_the_same_bytes(records: list[MetadataRecord]) -> None:
    payload = encode_records(records)
    decoded = decode_records(payload)
    assert decoded == records
    assert [type(r) for r in decoded] == [type(r) for r in records]
    assert encode_records(decoded) == payload
    assert len({hash(r) for r in decoded}) <= len(decoded)


def test_every_record_type_is_covered_and_the_format_is_versioned_json() -> None:
    records: list[MetadataRecord] = [
        RegisterBroker(1, "inc", 1, "h", 9092),
        FenceBroker(1, 1),
        UnfenceBroker(1, 1),
        CreateTopic("t", "id", (("a", "1"), ("b", "2"))),
        CreatePartition("t", 0, (1, 2), (1,), 1),
        ChangePartition("t", 0, (1, 2), 2, 1, 1),
        ChangeTopicConfigs("t", (("a", "3"),)),
        RemoveTopic("t"),
    ]
    assert MetadataRecord.__args__ == tuple(type(r) for r in records)
    document = json.loads(encode_records(records))
    assert document["v"] == 1
    assert [r["type"] for r in document["records"]] == [type(r).__name__ for r in records]
    assert document["records"][4] == {
        "type": "CreatePartition",
        "topic": "t",
        "partition": 0,
        "replicas": [1, 2],
        "isr": [1],
        "leader": 1,
        "leader_epoch": 0,
        "partition_epoch": 0,
    }
    assert decode_records(encode_records(records)) == records


_GOOD = encode_records([RegisterBroker(1, "inc", 1, "h", 9092), FenceBroker(1, 1)])


def _with(record: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "records": [record]}).encode()


_REGISTER = {
    "type": "RegisterBroker",
    "broker_id": 1,
    "incarnation_id": "i",
    "broker_epoch": 1,
    "host": "h",
    "port": 1,
}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[" * 100_000, id="deeply-nested"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"records":[]}', id="no-version"),
        pytest.param(b'{"v":2,"records":[]}', id="future-version"),
        pytest.param(b'{"v":1}', id="no-records"),
        pytest.param(b'{"v":1,"records":{}}', id="records-not-a-list"),
        pytest.param(b'{"v":1,"records":[3]}', id="record-not-an-object"),
        pytest.param(_with({"broker_id": 1, "broker_epoch": 1}), id="no-type"),
        pytest.param(_with({"type": "DeleteEverything"}), id="unknown-type"),
        pytest.param(_with({"type": 7}), id="type-not-a-string"),
        pytest.param(_with({"type": "FenceBroker", "broker_id": 1}), id="missing-field"),
        pytest.param(
            _with({"type": "FenceBroker", "broker_id": 1, "broker_epoch": 1, "x": 0}),
            id="unknown-field",
        ),
        pytest.param(_with({**_REGISTER, "port": "9092"}), id="string-for-int"),
        pytest.param(_with({**_REGISTER, "port": True}), id="bool-for-int"),
        pytest.param(_with({**_REGISTER, "port": 1.5}), id="float-for-int"),
        pytest.param(_with({**_REGISTER, "host": None}), id="null-for-string"),
        pytest.param(
            _with({"type": "ChangePartition", "topic": "t", "partition": 0, "isr": ["1"]}),
            id="string-in-int-list",
        ),
        pytest.param(
            _with({"type": "CreateTopic", "name": "t", "topic_id": "i", "configs": [["a"]]}),
            id="config-not-a-pair",
        ),
        pytest.param(
            _with({"type": "CreateTopic", "name": "t", "topic_id": "i", "configs": {"a": "b"}}),
            id="configs-not-a-list",
        ),
    ],
)
def test_bad_payloads_raise_metadata_error(payload: bytes) -> None:
    with pytest.raises(MetadataError):
        decode_records(payload)


def test_every_truncation_of_a_payload_is_refused() -> None:
    for end in range(len(_GOOD)):
        with pytest.raises(MetadataError):
            decode_records(_GOOD[:end])


# ---- apply --------------------------------------------------------------------------------


def cluster() -> MetadataImage:
    """Brokers 1-3 unfenced, 4 fenced; topic t: t-0 [1,2,3] led by 1, t-1 [2,3] led by 2."""
    image = MetadataImage()
    image.apply([RegisterBroker(b, f"inc{b}", b, "h", 9090 + b) for b in (1, 2, 3, 4)], 0)
    image.apply([UnfenceBroker(b, b) for b in (1, 2, 3)], 1)
    image.apply(
        [
            CreateTopic("t", "id-t", (("cleanup.policy", "compact"),)),
            CreatePartition("t", 0, (1, 2, 3), (1, 2, 3), 1),
            CreatePartition("t", 1, (2, 3), (2, 3), 2),
        ],
        2,
    )
    return image


def test_apply_builds_the_image() -> None:
    image = cluster()
    assert image.offset == 2
    assert image.next_broker_epoch == 5
    assert image.live_brokers() == [1, 2, 3]
    assert image.brokers[4] == BrokerInfo(4, "inc4", 4, "h", 9094, True, 0)
    assert image.topics["t"] == TopicInfo("t", "id-t", (("cleanup.policy", "compact"),), 2)
    assert image.topic_count == 1
    assert [p.partition for p in image.partitions_of("t")] == [0, 1]
    assert image.partitions_of("missing") == []
    assert image.partitions_led_by(2) == [PartitionInfo("t", 1, (2, 3), (2, 3), 2, 0, 0)]


def test_register_again_replaces_the_registration_fenced() -> None:
    image = cluster()
    image.apply(
        [RegisterBroker(3, "again", 9, "h2", 1), ChangePartition("t", 0, (1, 2), 1, 0, 1)], 7
    )
    assert image.brokers[3] == BrokerInfo(3, "again", 9, "h2", 1, True, 7)
    assert image.next_broker_epoch == 10
    assert image.live_brokers() == [1, 2]


def test_remove_topic_drops_its_partitions_and_the_name_can_be_reused() -> None:
    image = cluster()
    image.apply([RemoveTopic("t")], 3)
    assert image.topics == {} and image.partitions == {}
    image.apply(
        [
            CreateTopic("t", "id-t2", ()),
            CreatePartition("t", 0, (3,), (3,), 3),
            RemoveTopic("t"),
            CreateTopic("t", "id-t3", ()),
        ],
        4,
    )
    assert image.topics["t"] == TopicInfo("t", "id-t3", (), 0)
    assert image.partitions == {}


def test_fencing_with_the_leadership_moved_in_the_same_entry() -> None:
    image = cluster()
    image.apply(
        [
            FenceBroker(1, 1),
            ChangePartition("t", 0, (2, 3), 2, 1, 1),
        ],
        3,
    )
    assert image.brokers[1].fenced
    assert image.partitions[("t", 0)] == PartitionInfo("t", 0, (1, 2, 3), (2, 3), 2, 1, 1)


_REFUSED: list[Any] = [
    pytest.param([CreatePartition("u", 0, (1,), (1,), 1)], id="partition-of-unknown-topic"),
    pytest.param([CreatePartition("t", 0, (1,), (1,), 1)], id="partition-exists"),
    pytest.param([CreatePartition("t", 3, (1,), (1,), 1)], id="partition-out-of-order"),
    pytest.param([ChangePartition("t", 2, (1,), 1, 1, 1)], id="change-unknown-partition"),
    pytest.param([ChangePartition("u", 0, (1,), 1, 1, 1)], id="change-unknown-topic"),
    pytest.param([ChangePartition("t", 0, (1, 2), 1, 0, 0)], id="partition-epoch-same"),
    pytest.param([ChangePartition("t", 0, (1, 2), 1, 0, 2)], id="partition-epoch-skips"),
    pytest.param([ChangePartition("t", 0, (1, 2, 3), 2, 0, 1)], id="leader-change-same-epoch"),
    pytest.param([ChangePartition("t", 0, (1, 2, 3), 1, -1, 1)], id="leader-epoch-back"),
    pytest.param([ChangePartition("t", 0, (2, 3), 1, 1, 1)], id="leader-not-in-isr"),
    pytest.param([ChangePartition("t", 1, (2, 3, 1), 2, 0, 1)], id="isr-not-in-replicas"),
    pytest.param([ChangePartition("t", 0, (), -1, 1, 1)], id="isr-empty"),
    pytest.param([ChangePartition("t", 0, (1, 1), 1, 0, 1)], id="isr-repeats"),
    pytest.param([CreatePartition("t", 2, (1, 1), (1,), 1)], id="replicas-repeat"),
    pytest.param([CreatePartition("t", 2, (1, 9), (1,), 1)], id="replica-unregistered"),
    pytest.param([CreatePartition("t", 2, (4, 1), (4, 1), 4)], id="fenced-leader"),
    pytest.param([CreatePartition("t", 2, (1,), (1,), 1, -1)], id="negative-epoch"),
    pytest.param([CreateTopic("t", "id-new", ())], id="topic-exists"),
    pytest.param([CreateTopic("u", "id-t", ())], id="topic-id-in-use"),
    pytest.param([CreateTopic("u", "", ())], id="topic-id-empty"),
    pytest.param([CreateTopic("bad/name", "id-u", ())], id="topic-name-illegal"),
    pytest.param([CreateTopic("u", "id-u", (("b", "1"), ("a", "2")))], id="configs-unsorted"),
    pytest.param([CreateTopic("u", "id-u", (("a", "1"), ("a", "2")))], id="configs-repeat"),
    pytest.param([RemoveTopic("u")], id="remove-unknown-topic"),
    pytest.param([FenceBroker(9, 1)], id="fence-unknown-broker"),
    pytest.param([FenceBroker(3, 2)], id="fence-stale-epoch"),
    pytest.param([FenceBroker(4, 4)], id="fence-fenced"),
    pytest.param([UnfenceBroker(3, 3)], id="unfence-unfenced"),
    pytest.param([UnfenceBroker(4, 3)], id="unfence-stale-epoch"),
    pytest.param([FenceBroker(1, 1)], id="fenced-broker-still-leads"),
    pytest.param(
        [ChangePartition("t", 0, (1, 2, 3), 3, 1, 1), FenceBroker(3, 3)],
        id="fenced-after-being-made-leader",
    ),
    pytest.param([RegisterBroker(1, "new", 9, "h", 1)], id="registered-broker-still-leads"),
    pytest.param([RegisterBroker(5, "new", 4, "h", 1)], id="broker-epoch-reused"),
    pytest.param([RegisterBroker(-1, "new", 9, "h", 1)], id="negative-broker-id"),
    pytest.param([RegisterBroker(5, "", 9, "h", 1)], id="empty-incarnation"),
    pytest.param([RegisterBroker(5, "new", 9, "h", 65536)], id="port-out-of-range"),
    pytest.param(
        [
            RegisterBroker(5, "inc5", 5, "h", 1),
            UnfenceBroker(5, 5),
            CreateTopic("u", "id-u", ()),
            CreatePartition("u", 0, (5,), (5,), 5),
            ChangePartition("t", 0, (1, 2), 1, 0, 1),
            RemoveTopic("t"),
            RemoveTopic("t"),
        ],
        id="last-record-refused",
    ),
]


@pytest.mark.parametrize("records", _REFUSED)
def test_a_refused_entry_leaves_the_image_unchanged(records: list[MetadataRecord]) -> None:
    image = cluster()
    before, snapshot = image.copy(), image.encode_snapshot()
    with pytest.raises(MetadataError):
        image.apply(records, 3)
    assert image == before
    assert image.encode_snapshot() == snapshot
    image.apply([RemoveTopic("t")], 3)  # still usable at the next offset


@pytest.mark.parametrize("offset", [2, 1, -1])
def test_offsets_must_increase(offset: int) -> None:
    image = cluster()
    before = image.copy()
    with pytest.raises(MetadataError):
        image.apply([], offset)
    assert image == before
    image.apply([], 10)  # gaps are fine: Raft control records take offsets too
    assert image.offset == 10


# ---- snapshots ----------------------------------------------------------------------------


_epochs = st.tuples(st.integers(0, 5), st.integers(0, 5))


def _subset(data: st.DataObject, items: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(data.draw(st.lists(st.sampled_from(items), min_size=1, unique=True)))


def _leader(data: st.DataObject, image: MetadataImage, isr: tuple[int, ...]) -> int:
    live = [b for b in isr if not image.brokers[b].fenced]
    return data.draw(st.sampled_from([-1, *live]))


def _leaderless(image: MetadataImage, broker_id: int) -> list[MetadataRecord]:
    return [
        ChangePartition(p.topic, p.partition, p.isr, -1, p.leader_epoch + 1, p.partition_epoch + 1)
        for p in image.partitions_led_by(broker_id)
    ]


def random_entry(data: st.DataObject, image: MetadataImage) -> list[MetadataRecord]:
    """One valid entry for `image`, by any path, not only the controller's."""
    brokers = sorted(image.brokers)
    kinds = ["register", "empty"]
    if brokers:
        kinds += ["fence", "unfence", "topic"]
    if image.partitions:
        kinds += ["change", "remove"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "register":
        b = data.draw(st.integers(0, 5))
        epoch = image.next_broker_epoch + data.draw(st.integers(0, 2))
        register = RegisterBroker(b, data.draw(st.text(min_size=1)), epoch, "h", 9092)
        return [register, *_leaderless(image, b)]
    if kind in ("fence", "unfence"):
        fence = kind == "fence"
        candidates = [b for b in brokers if image.brokers[b].fenced != fence]
        if not candidates:
            return []
        b = data.draw(st.sampled_from(candidates))
        epoch = image.brokers[b].broker_epoch
        if not fence:
            return [UnfenceBroker(b, epoch)]
        return [FenceBroker(b, epoch), *_leaderless(image, b)]
    if kind == "topic":
        name = data.draw(st.sampled_from(["a", "b.c", "d_e", "f-g"]))
        topic_id = f"id-{data.draw(st.integers(0, 10**9))}"
        if name in image.topics or topic_id in {t.topic_id for t in image.topics.values()}:
            return []
        configs = data.draw(_configs)
        records: list[MetadataRecord] = [CreateTopic(name, topic_id, configs)]
        for i in range(data.draw(st.integers(0, 3))):
            replicas = _subset(data, brokers)
            isr = _subset(data, replicas)
            leader = _leader(data, image, isr)
            records.append(CreatePartition(name, i, replicas, isr, leader, *data.draw(_epochs)))
        return records
    if kind == "change":
        p = image.partitions[data.draw(st.sampled_from(sorted(image.partitions)))]
        isr = _subset(data, p.replicas)
        leader = _leader(data, image, isr)
        epoch = p.leader_epoch + (leader != p.leader) + data.draw(st.integers(0, 1))
        return [ChangePartition(p.topic, p.partition, isr, leader, epoch, p.partition_epoch + 1)]
    if kind == "remove":
        return [RemoveTopic(data.draw(st.sampled_from(sorted(image.topics))))]
    return []


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(0, 40))
def test_snapshot_round_trips_any_valid_history(data: st.DataObject, steps: int) -> None:
    image = MetadataImage()
    entries: list[tuple[bytes, int]] = []
    cut = data.draw(st.integers(0, steps))
    cut_snapshot = image.encode_snapshot()
    for step in range(steps):
        records = random_entry(data, image)
        payload = encode_records(records)
        offset = image.offset + data.draw(st.integers(1, 3))
        image.apply(decode_records(payload), offset)
        entries.append((payload, offset))
        if step + 1 == cut:
            cut_snapshot = image.encode_snapshot()
    snapshot = image.encode_snapshot()
    restored = MetadataImage.decode_snapshot(snapshot)
    assert restored == image
    assert restored.encode_snapshot() == snapshot

    replayed = MetadataImage()
    for payload, offset in entries:
        replayed.apply(decode_records(payload), offset)
    assert replayed == image

    resumed = MetadataImage.decode_snapshot(cut_snapshot)
    for payload, offset in entries[cut:]:
        resumed.apply(decode_records(payload), offset)
    assert resumed == image


def test_empty_image_snapshot() -> None:
    assert MetadataImage.decode_snapshot(MetadataImage().encode_snapshot()) == MetadataImage()


def _mutated(change: Any) -> bytes:
    document = json.loads(cluster().encode_snapshot())
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(cluster().encode_snapshot()[:-1], id="truncated"),
        pytest.param(encode_records([]), id="an-entry-not-a-snapshot"),
        pytest.param(_mutated(lambda d: d.update(v=0)), id="version"),
        pytest.param(_mutated(lambda d: d.pop("brokers")), id="no-brokers"),
        pytest.param(_mutated(lambda d: d["brokers"][0].pop("fenced")), id="missing-field"),
        pytest.param(_mutated(lambda d: d["brokers"][0].update(fenced=0)), id="int-for-bool"),
        pytest.param(_mutated(lambda d: d["brokers"][0].update(type="x")), id="unknown-field"),
        pytest.param(_mutated(lambda d: d["brokers"].append(d["brokers"][0])), id="broker-twice"),
        pytest.param(_mutated(lambda d: d.update(next_broker_epoch=4)), id="epoch-behind"),
        pytest.param(_mutated(lambda d: d.update(offset=-2)), id="offset-below-start"),
        pytest.param(_mutated(lambda d: d.update(offset=-1)), id="broker-after-offset"),
        pytest.param(_mutated(lambda d: d["partitions"].pop()), id="missing-partition"),
        pytest.param(
            _mutated(lambda d: d["partitions"].append(d["partitions"][0])), id="partition-twice"
        ),
        pytest.param(_mutated(lambda d: d["topics"].clear()), id="partition-without-topic"),
        pytest.param(_mutated(lambda d: d["topics"][0].update(topic_id="")), id="empty-topic-id"),
        pytest.param(
            _mutated(lambda d: d["topics"][0]["configs"].append(["a", "b"])), id="configs-unsorted"
        ),
        pytest.param(_mutated(lambda d: d["brokers"][0].update(fenced=True)), id="fenced-leader"),
        pytest.param(_mutated(lambda d: d["partitions"][0].update(isr=[])), id="empty-isr"),
    ],
)
def test_bad_snapshots_raise_metadata_error(data: bytes) -> None:
    with pytest.raises(MetadataError):
        MetadataImage.decode_snapshot(data)
