"""Golden frames: real clients' requests (and kops's answers) decode and re-encode byte for byte.

The frames in golden/ were captured by capture_frames.py from confluent-kafka,
kafka-python (negotiated and pinned to older broker versions) and aiokafka
talking to a kops broker through a recording proxy; manifest.json says who
sent each one. For every (api key, version) the broker serves:

- captured: the request frame decodes with kio (kops.protocol.messages) and
  re-encodes to the identical bytes; so does the response frame, decoded
  with the response class of the request's version (from the file name);
  and the request, replayed against a live kops broker, gets an answer that
  decodes;
- sent by no installed client: a kio-built request and response (every field
  populated) encode → decode → encode to the same bytes and value;
- Produce v0-2: advertised (librdkafka before 2.11.1 disables compression
  unless Produce v0 is); kio has no schema for them, the broker decodes them
  as v3 and answers UNSUPPORTED_VERSION (tests/broker/test_produce_legacy.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.index import load_request_schema

from kops.broker.dispatch import api_table
from kops.protocol.client import send_request
from kops.protocol.errors import ConnectionLostError
from kops.protocol.messages import (
    UnsupportedVersionError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_type,
    response_type,
)
from kops.testing import run_broker
from tests.protocol.kio_sample import sample

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST: dict[str, Any] = json.loads((GOLDEN / "manifest.json").read_text())
FRAMES: dict[str, dict[str, Any]] = MANIFEST["frames"]

SERVED = sorted(
    (key, version)
    for key, api in api_table().items()
    for version in range(api.min_version, api.max_version + 1)
)
CAPTURED = {(f["api_key"], f["api_version"]): name for name, f in FRAMES.items()}

# Advertised, but kio 0.6.5 has no schema (Kafka 4 dropped message formats 0/1).
NO_KIO_SCHEMA = {(0, 0), (0, 1), (0, 2)}

# Served versions no installed client sends (checked against the captures, so
# this list stays true): covered by kio-built round trips instead.
NOT_SENT_BY_ANY_CLIENT = {
    (0, 4): "produce v4: kafka-python pins jump from v3 (0.11) to v5 (1.0); others send v7/v8",
    (1, 4): "fetch v4: the oldest pinned kafka-python that fetches (0.11) sends v5",
    (1, 9): "fetch v9: pinned kafka-python jumps from v8 (2.0) to v10 (2.1)",
    (3, 3): "metadata v3: pinned kafka-python jumps from v2 (0.10.1) to v4 (0.11)",
    (8, 5): "offset_commit v5: pinned kafka-python jumps from v4 (2.0) to v6 (2.1)",
    (16, 3): "list_groups v3: kafka-python sends v2 up to 2.3 pins, v4 from 2.4",
    (23, 2): "offset_for_leader_epoch: clients validate positions only after a leader epoch "
    "change, which a single kops broker never has",
    (23, 3): "offset_for_leader_epoch v3 (replica id): a follower's request, no client sends it",
    (32, 3): "describe_configs v3: kafka-python sends v2 up to 2.3 pins, v4 from 2.4",
    (35, 2): "describe_log_dirs v2: kafka-python sends v1 up to 2.3 pins, v3 from 2.4",
    # Served since the captures were taken; each has raw-request tests named here.
    **{
        (2, v): "list_offsets v6-v11: newer than the captures; "
        "tests/broker/test_list_offsets_max_timestamp.py"
        for v in range(6, 12)
    },
    (16, 5): "list_groups v5: newer than the captures; tests/broker/test_list_groups_filters.py",
    **{
        (9, v): "offset_fetch v6-v9: newer than the captures; "
        "tests/broker/test_offset_fetch_versions.py"
        for v in range(6, 10)
    },
    **{
        (33, v): "alter_configs (legacy): capture_frames.py never calls it; "
        "tests/broker/test_topic_configs.py"
        for v in range(3)
    },
    **{
        (22, v): "init_producer_id v2-4: newer than the captures; tests/broker/test_transactions.py"
        for v in range(2, 5)
    },
    **{
        (key, v): "transaction APIs: newer than the captures (confluent-kafka's transactional "
        "producer sends them in tests/broker/test_transactions.py)"
        for key in (24, 25, 26, 28)
        for v in range(4)
    },
    **{
        pair: "describe/list_transactions: no installed client sends them; "
        "kops txn (kops/transactions.py) does, in tests/cli/test_txn_cli.py"
        for pair in ((65, 0), (66, 0), (66, 1))
    },
    **{
        (27, v): "write_txn_markers: sent by a transaction coordinator to other leaders: "
        "tests/cluster/test_cluster_transactions.py"
        for v in (1, 2)
    },
    (1, 12): "fetch v12: newer than the captures; tests/broker/test_fetch_versions.py, "
    "and the quorum's Fetch in tests/cluster/test_raft_wire.py",
    **{
        (key, 0): "KRaft quorum APIs, sent by kops brokers to each other: "
        "tests/cluster/test_raft_wire.py, tests/cluster/test_quorum_processes.py"
        for key in (52, 53, 54, 59)
    },
    **{
        (55, v): "describe_quorum (kafka-metadata-quorum.sh): "
        "tests/cluster/test_quorum_processes.py"
        for v in (0, 1)
    },
    **{
        (60, v): "describe_cluster v1-v2: newer than the captures; "
        "tests/broker/test_describe_cluster.py, tests/cluster/test_membership_processes.py"
        for v in (1, 2)
    },
    **{
        (56, v): "alter_partition, sent by partition leaders to the controller: "
        "tests/cluster/test_alter_partition.py"
        for v in (2, 3)
    },
    **{
        (key, 0): "broker registration/heartbeat, sent by kops brokers to the controller: "
        "tests/cluster/test_membership_processes.py, tests/broker/test_describe_cluster.py"
        for key in (62, 63)
    },
    (75, 0): "describe_topic_partitions: librdkafka 2.16 describes topics with Metadata; "
    "tests/broker/test_authorized_operations.py",
}

# Captured requests of served versions the broker did not answer (it closed the
# connection), with the reason. Empty now; the first captures had Fetch v5-v8
# here: handlers/fetch.py read `current_leader_epoch`, a v9+ field, from every
# version (AttributeError, connection closed), since fixed in the broker.
UNANSWERED: dict[tuple[int, int], str] = {}


def _request_names() -> list[str]:
    return sorted(FRAMES, key=lambda n: (FRAMES[n]["api_key"], FRAMES[n]["api_version"]))


def _response_names() -> list[str]:
    return [n for n in _request_names() if FRAMES[n]["response_bytes"] is not None]


def test_golden_files_match_the_manifest() -> None:
    on_disk = {p.name for p in GOLDEN.glob("*.bin")}
    expected = {f"{n}.request.bin" for n in FRAMES} | {
        f"{n}.response.bin" for n in _response_names()
    }
    assert on_disk == expected
    total = sum(p.stat().st_size for p in GOLDEN.glob("*.bin"))
    assert total < 2_000_000


def test_every_served_version_is_covered() -> None:
    served = set(SERVED)
    captured = set(CAPTURED)
    assert captured <= served, f"captured but not served: {sorted(captured - served)}"
    assert {pair for pair in served if _has_no_schema(*pair)} == NO_KIO_SCHEMA
    built = served - captured - NO_KIO_SCHEMA
    assert built == set(NOT_SENT_BY_ANY_CLIENT), (
        "update NOT_SENT_BY_ANY_CLIENT: "
        f"now captured {sorted(set(NOT_SENT_BY_ANY_CLIENT) - built)}, "
        f"no longer captured {sorted(built - set(NOT_SENT_BY_ANY_CLIENT))}"
    )
    unanswered = {pair for pair, name in CAPTURED.items() if FRAMES[name]["outcome"] != "answered"}
    acks0 = {pair for pair, name in CAPTURED.items() if FRAMES[name]["outcome"] == "no response"}
    assert unanswered - acks0 == set(UNANSWERED)


def _has_no_schema(key: int, version: int) -> bool:
    try:
        request_type(key, version)
    except UnsupportedVersionError:
        return True
    return False


@pytest.mark.parametrize("name", _request_names())
def test_captured_request_round_trips(name: str) -> None:
    raw = (GOLDEN / f"{name}.request.bin").read_bytes()
    info = FRAMES[name]
    assert int.from_bytes(raw[:4], "big") == len(raw) - 4
    frame = decode_request(raw[4:])
    assert (frame.api_key, frame.api_version) == (info["api_key"], info["api_version"])
    assert frame.client_id == info["client_id"]
    assert type(frame.body) is load_request_schema(frame.api_key, frame.api_version)
    assert encode_request(frame.correlation_id, frame.body, frame.client_id) == raw


@pytest.mark.parametrize("name", _response_names())
def test_captured_response_round_trips(name: str) -> None:
    info = FRAMES[name]
    raw = (GOLDEN / f"{name}.response.bin").read_bytes()
    assert int.from_bytes(raw[:4], "big") == len(raw) - 4
    request = decode_request((GOLDEN / f"{name}.request.bin").read_bytes()[4:])
    correlation_id, body = decode_response(
        raw[4:], response_type(info["api_key"], info["api_version"])
    )
    assert correlation_id == request.correlation_id
    assert b"".join(encode_response(correlation_id, body)) == raw


@pytest.mark.parametrize(("key", "version"), sorted(NOT_SENT_BY_ANY_CLIENT), ids=lambda v: str(v))
def test_built_round_trip_for_versions_no_client_sends(key: int, version: int) -> None:
    request = sample(request_type(key, version))
    raw = encode_request(42, request, "kops-golden")
    decoded = decode_request(raw[4:])
    assert decoded.body == request
    assert encode_request(decoded.correlation_id, decoded.body, decoded.client_id) == raw

    response_cls = response_type(key, version)
    response = sample(response_cls)
    raw = b"".join(encode_response(42, response))
    correlation_id, body = decode_response(raw[4:], response_cls)
    assert (correlation_id, body) == (42, response)
    assert b"".join(encode_response(correlation_id, body)) == raw


@pytest.fixture(scope="module")
def replay_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with run_broker(tmp_path_factory.mktemp("golden-replay")) as bootstrap:
        host, _, port = bootstrap.rpartition(":")
        yield host, int(port)


def _replay_params() -> list[Any]:
    params = []
    for name in _request_names():
        info = FRAMES[name]
        if info["outcome"] == "no response":
            continue  # Produce with acks=0: nothing to wait for
        reason = UNANSWERED.get((info["api_key"], info["api_version"]))
        marks = [pytest.mark.xfail(raises=ConnectionLostError, strict=True, reason=reason)]
        params.append(pytest.param(name, marks=marks if reason else []))
    return params


@pytest.mark.parametrize("name", _replay_params())
def test_broker_answers_captured_request(name: str, replay_broker: tuple[str, int]) -> None:
    """Replayed against a fresh broker, each request gets a response that decodes."""
    info = FRAMES[name]
    request = decode_request((GOLDEN / f"{name}.request.bin").read_bytes()[4:])
    response = send_request(*replay_broker, request.body, timeout=10, client_id=request.client_id)
    assert type(response) is response_type(info["api_key"], info["api_version"])
