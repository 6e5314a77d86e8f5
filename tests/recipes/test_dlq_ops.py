"""dlq list / inspect / replay / purge against the bundled broker, on hand-made dead letters."""

from __future__ import annotations

import struct
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from kops.admin import create_topic, describe_topic
from kops.consume import StartAt, consume
from kops.recipes import headers as h
from kops.recipes.dlq import (
    ReplayFilter,
    dead_letter_headers,
    inspect,
    list_dlq_topics,
    purge,
    replay,
    replay_state_topic,
)

NOW = int(time.time() * 1000)


def kops_dead_letter(
    exc: Exception, *, topic: str, partition: int, offset: int, failed_ms: int = NOW
) -> list[tuple[str, bytes | None]]:
    return dead_letter_headers(
        [("trace", f"t{offset}".encode())],
        exc,
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=NOW - 60_000,
        group="billing",
        attempts=3,
        first_failure_ms=failed_ms - 1000,
        reason="retries-exhausted",
        now_ms=failed_ms,
    )


def spring_dead_letter(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        ("kafka_dlt-original-topic", topic.encode()),
        ("kafka_dlt-original-partition", struct.pack(">i", partition)),
        ("kafka_dlt-original-offset", struct.pack(">q", offset)),
        ("kafka_dlt-exception-fqcn", b"java.lang.IllegalStateException"),
        ("kafka_dlt-exception-message", b"no stock"),
    ]


def send(bootstrap: str, topic: str, items: list[tuple[bytes, bytes, list, int | None]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for key, value, headers, ts in items:
        kwargs: dict[str, Any] = {"key": key, "headers": headers}
        if ts is not None:
            kwargs["timestamp"] = ts
        p.produce(topic, value, **kwargs)
    assert p.flush(10) == 0


def read_all(bootstrap: str, topic: str) -> list:
    return list(consume(bootstrap, topic, start=StartAt.beginning(), stop_at_end=True))


@pytest.fixture
def dlq_setup(kafka_broker: str) -> dict[str, Any]:
    """orders (2 partitions) and orders.dlq holding 6 kops dead letters (3 ValueError at
    t-2h.., 2 TimeoutError, 1 KeyError) and 1 Spring dead letter."""
    orders = f"orders-{uuid.uuid4().hex[:8]}"
    dlq = f"{orders}.dlq"
    create_topic(kafka_broker, orders, partitions=2)
    create_topic(kafka_broker, dlq, partitions=1)
    items = []
    for i in range(3):
        hs = kops_dead_letter(
            ValueError(f"bad amount {i}"), topic=orders, partition=1, offset=10 + i,
            failed_ms=NOW - 7_200_000 + i,
        )  # fmt: skip
        items.append((f"v{i}".encode(), f"value-{i}".encode(), hs, None))
    for i in range(2):
        hs = kops_dead_letter(TimeoutError("slow"), topic=orders, partition=0, offset=20 + i)
        items.append((f"t{i}".encode(), f"value-t{i}".encode(), hs, None))
    hs = kops_dead_letter(KeyError("sku"), topic=orders, partition=0, offset=30)
    items.append((b"key-x", b"value-x", hs, None))
    items.append((b"s0", b"spring-value", spring_dead_letter(orders, 1, 5), None))
    send(kafka_broker, dlq, items)
    return {"orders": orders, "dlq": dlq, "bootstrap": kafka_broker}


def test_list_by_name_and_by_headers(kafka_broker: str, dlq_setup: dict[str, Any]) -> None:
    odd = f"errors-{uuid.uuid4().hex[:8]}"  # a DLQ whose name says nothing
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, odd, partitions=1)
    create_topic(kafka_broker, plain, partitions=1)
    send(kafka_broker, odd, [(b"k", b"v", spring_dead_letter("x", 0, 1), None)])
    send(kafka_broker, plain, [(b"k", b"v", [("a", b"b")], None)])

    found = {t.name: t for t in list_dlq_topics(kafka_broker)}
    assert found[dlq_setup["dlq"]].records == 7
    assert found[dlq_setup["dlq"]].detected_by == "name"
    assert found[odd].detected_by == "headers" and found[odd].records == 1
    assert plain not in found and dlq_setup["orders"] not in found
    assert odd not in {t.name for t in list_dlq_topics(kafka_broker, scan_headers=False)}


def test_inspect_groups_by_exception(dlq_setup: dict[str, Any]) -> None:
    report = inspect(dlq_setup["bootstrap"], dlq_setup["dlq"], samples=2)
    assert report.total == 7 and report.replayed == 0
    assert dict(report.formats) == {"kops": 6, "spring": 1}
    counts = [(e.exception_class, e.count) for e in report.exceptions]
    assert counts == [
        ("ValueError", 3),
        ("TimeoutError", 2),
        ("KeyError", 1),
        ("java.lang.IllegalStateException", 1),
    ]
    values = report.exceptions[0]
    assert len(values.samples) == 2 and values.samples[0].exception_message == "bad amount 0"
    assert values.original_topics == {dlq_setup["orders"]: 3}
    assert values.first_failed_ms == NOW - 7_200_000
    as_json = report.to_dict()
    assert as_json["exceptions"][0]["samples"][0]["original_offset"] == 10


def test_replay_rate_once_and_content(dlq_setup: dict[str, Any]) -> None:
    bootstrap, orders, dlq = dlq_setup["bootstrap"], dlq_setup["orders"], dlq_setup["dlq"]
    rate = 10.0
    started = time.monotonic()
    report = replay(bootstrap, dlq, rate=rate)
    elapsed = time.monotonic() - started
    assert report.replayed == 7 and report.targets == {orders: 7}
    # Rate limit, measured: N records at R per second take at least (N - 1) / R.
    assert elapsed >= (7 - 1) / rate

    out = {r.key: r for r in read_all(bootstrap, orders)}
    assert len(out) == 7
    v0 = out[b"v0"]
    assert v0.value == b"value-0" and v0.partition == 1  # back to its original partition
    names = [k for k, _ in v0.headers]
    assert ("trace", b"t10") in v0.headers
    assert not any(n.startswith(("kops.dlq.", "kafka_dlt-")) for n in names)
    assert h.get(v0.headers, h.REPLAY_OF) == f"{dlq}/0/0"
    assert h.get(v0.headers, h.RETRY_GROUP) == "billing"
    assert out[b"s0"].partition == 1 and out[b"s0"].value == b"spring-value"

    # Replay-once: a second run finds everything already replayed.
    again = replay(bootstrap, dlq, rate=0)
    assert again.replayed == 0 and again.already_replayed == 7
    assert len(read_all(bootstrap, orders)) == 7
    assert inspect(bootstrap, dlq).replayed == 7


def test_replay_filters_limit_and_dry_run(kafka_broker: str, dlq_setup: dict[str, Any]) -> None:
    dlq = dlq_setup["dlq"]
    target = f"fixed-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, target, partitions=1)

    dry = replay(kafka_broker, dlq, to=target, where=ReplayFilter(exception="ValueError"),
                 dry_run=True)  # fmt: skip
    assert dry.replayed == 3 and [p["key"] for p in dry.planned] == ["v0", "v1", "v2"]
    assert read_all(kafka_broker, target) == []
    with pytest.raises(Exception, match="unknown topic"):
        read_all(kafka_broker, replay_state_topic(dlq))  # a dry run marks nothing

    by_time = replay(kafka_broker, dlq, to=target, rate=0,
                     where=ReplayFilter(since_ms=NOW - 7_200_000 + 1, until_ms=NOW - 3_600_000))  # fmt: skip
    assert by_time.replayed == 2  # v1, v2: failed 2 h ago, after the first one
    by_key = replay(kafka_broker, dlq, to=target, rate=0, where=ReplayFilter(key="key-x"))
    assert by_key.replayed == 1
    limited = replay(kafka_broker, dlq, to=target, rate=0, limit=2)
    assert limited.replayed == 2  # v0 and t0: the first two not yet replayed
    rest = replay(kafka_broker, dlq, to=target, rate=0)
    assert rest.replayed == 2 and rest.already_replayed == 5
    keys = [r.key for r in read_all(kafka_broker, target)]
    assert sorted(keys) == sorted([b"v0", b"v1", b"v2", b"t0", b"t1", b"key-x", b"s0"])
    # --to another topic: the record is for anyone there, not only the failing group.
    assert all(h.get(r.headers, h.RETRY_GROUP) is None for r in read_all(kafka_broker, target))


def test_replay_to_missing_topic_fails_cleanly(kafka_broker: str) -> None:
    dlq = f"gone-{uuid.uuid4().hex[:8]}.dlq"
    create_topic(kafka_broker, dlq, partitions=1)
    hs = kops_dead_letter(ValueError("x"), topic="no-such-topic-here", partition=0, offset=1)
    send(kafka_broker, dlq, [(b"k", b"v", hs, None)])
    with pytest.raises(Exception, match="does not exist"):
        replay(kafka_broker, dlq, rate=0)


def test_purge_before_and_all(kafka_broker: str) -> None:
    dlq = f"purge-{uuid.uuid4().hex[:8]}.dlq"
    create_topic(kafka_broker, dlq, partitions=2)
    old, new = NOW - 86_400_000, NOW - 1000
    items = []
    for p in range(2):
        items += [(f"o{p}{i}".encode(), b"x", [], old + i) for i in range(3)]
        items += [(f"n{p}{i}".encode(), b"x", [], new + i) for i in range(2)]
    p = Producer({"bootstrap.servers": kafka_broker})
    for key, value, _, ts in items:
        p.produce(dlq, value, key=key, timestamp=ts, partition=int(key[1:2]))
    assert p.flush(10) == 0

    results = purge(kafka_broker, dlq, before_ms=NOW - 3_600_000)
    assert [(r.partition, r.start_before, r.start_after, r.end) for r in results] == [
        (0, 0, 3, 5),
        (1, 0, 3, 5),
    ]
    info = describe_topic(kafka_broker, dlq)
    assert [pi.start_offset for pi in info.partitions] == [3, 3]
    assert sorted(r.key for r in read_all(kafka_broker, dlq)) == [b"n00", b"n01", b"n10", b"n11"]

    results = purge(kafka_broker, dlq)
    assert sum(r.deleted for r in results) == 4
    assert [pi.start_offset for pi in describe_topic(kafka_broker, dlq).partitions] == [5, 5]
    assert purge(kafka_broker, dlq)[0].deleted == 0  # nothing left: a no-op
