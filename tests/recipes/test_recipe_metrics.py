"""Recipe metrics on prometheus-client's default registry move with real traffic.

Each test reads the counters before and after (other tests in the session move them too, but
tests run one at a time and labels carry per-test topic names where the contract allows).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from kops import admin
from kops.client import AdminSession, ClientSettings
from kops.recipes.delay import DelayTiers, cancel_delayed, send_delayed
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.recipes.dlq.replay import replay
from kops.recipes.fanout.forward import fanout
from kops.recipes.idempotent import Idempotent
from kops.recipes.idempotent.records import Record
from kops.recipes.idempotent.stores import SQLiteStore
from kops.recipes.metrics import WORKER_METRICS
from kops.recipes.offsets import alter_group_offsets
from kops.recipes.retry import RetryPolicy, run_retrying_consumer
from kops.testing import wait_until
from kops.worker.jobs.lag import consumer_lag_job
from kops.worker.registry import JobContext


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_contract_name_is_registered() -> None:
    exposed = {m.name for m in REGISTRY.collect()}
    # prometheus-client names a counter family without `_total`; its sample keeps it.
    missing = {
        n for n in WORKER_METRICS if n not in exposed and n.removesuffix("_total") not in exposed
    }
    assert not missing


# --------------------------------------------------------------------------- delay


@pytest.fixture
def forwarders(kafka_broker: str) -> Iterator[tuple[DelayForwarders, str, Producer]]:
    tag = uuid.uuid4().hex[:8]
    tiers = DelayTiers.parse("1s,2s,5s", template=f"m{tag}.{{tier}}", max_delay=60)
    options = ForwarderOptions(
        tiers=tiers,
        group=f"mfwd-{tag}",
        cancel_topic=f"m{tag}.cancel",
        stats_topic=f"m{tag}.stats",
        stats_interval=0.5,
    )
    target = f"mtarget-{tag}"
    admin.create_topic(kafka_broker, target, 1)
    fw = DelayForwarders(kafka_broker, options)
    stop = threading.Event()
    thread = threading.Thread(target=fw.run, args=(stop,), daemon=True)
    thread.start()
    assert fw.wait_assigned(30), "forwarders did not join their group"
    producer = Producer({"bootstrap.servers": kafka_broker, "enable.idempotence": True})
    try:
        yield fw, target, producer
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "forwarders did not stop"


def test_delay_forwarder_metrics(forwarders: tuple[DelayForwarders, str, Producer]) -> None:
    fw, target, producer = forwarders
    tiers = fw.options.tiers
    labels = ["1s", "2s", "5s"]
    forwarded0 = {t: value("kops_delay_forwarded_total", tier=t) for t in labels}
    late0 = {t: value("kops_delay_lateness_seconds_count", tier=t) for t in labels}
    late_sum0 = sum(value("kops_delay_lateness_seconds_sum", tier=t) for t in labels)
    cancelled0 = value("kops_delay_cancellations_total")

    delays = [1.0, 1.0, 1.5, 2.0, 2.0]
    for i, d in enumerate(delays):
        send_delayed(producer, target, f"v{i}".encode(), delay=d, tiers=tiers)
    dropped = send_delayed(producer, target, b"cancelled", delay=1.0, tiers=tiers)
    cancel_delayed(producer, dropped, cancel_topic=fw.options.cancel_topic or "")
    send_delayed(producer, target, b"parked", delay=40, tiers=tiers)  # waits in the 5s tier
    assert producer.flush(10) == 0

    def delivered() -> float:
        return sum(value("kops_delay_lateness_seconds_count", tier=t) - late0[t] for t in labels)

    wait_until(lambda: delivered() >= len(delays), 20, message="five deliveries")
    wait_until(lambda: value("kops_delay_cancellations_total") > cancelled0, 10)
    snap = fw.stats.snapshot()
    # The histogram counts exactly the records delivered to their target, per tier; the
    # forwarded counter also counts the hops to a smaller tier (cascades).
    for t in labels:
        counts = snap.get(t, {"delivered": 0, "cascaded": 0})
        assert value("kops_delay_lateness_seconds_count", tier=t) - late0[t] == counts["delivered"]
        assert (
            value("kops_delay_forwarded_total", tier=t) - forwarded0[t]
            == counts["delivered"] + counts["cascaded"]
        )
    assert delivered() == len(delays)
    assert value("kops_delay_forwarded_total", tier="2s") - forwarded0["2s"] >= 2
    assert value("kops_delay_cancellations_total") - cancelled0 == 1
    late_sum = sum(value("kops_delay_lateness_seconds_sum", tier=t) for t in labels) - late_sum0
    assert 0 <= late_sum < len(delays) * 2.0  # never early; late by far less than a tier
    # The 40 s record waits in the 5s tier: end offset minus the forwarder's position.
    wait_until(lambda: value("kops_delay_parked_records", tier="5s") >= 1, 15)
    assert value("kops_delay_parked_records", tier="1s") == 0


# --------------------------------------------------------------------------- retry / DLQ


class InvalidOrder(Exception):
    pass


def test_retry_attempts_and_dead_letters_by_cause(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"morders-{tag}"
    admin.create_topic(kafka_broker, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_broker})
    for v in (b"bad", b"flaky", b"ok"):
        producer.produce(topic, v)
    assert producer.flush(10) == 0

    def handle(msg: object) -> None:
        v = msg.value()  # type: ignore[attr-defined]
        if v == b"bad":
            raise InvalidOrder("amount < 0")
        if v == b"flaky":
            raise TimeoutError("payment service")

    policy = RetryPolicy(attempts=1, retryable=(TimeoutError,), ladder=(30,))
    tiers = DelayTiers.parse("1s,5s", template=f"mr{tag}.{{tier}}", max_delay=60)
    stats = run_retrying_consumer(
        kafka_broker, [topic], handle, group=f"mbill-{tag}", policy=policy, tiers=tiers,
        max_records=3, idle_timeout=20,
    )  # fmt: skip
    assert stats.dead_lettered == 1 and stats.retry_scheduled == 1
    assert value("kops_dlq_dead_lettered_total", topic=topic, cause="InvalidOrder") == 1
    assert value("kops_dlq_dead_lettered_total", topic=topic, cause="TimeoutError") == 0
    assert value("kops_retry_attempts_total", topic=topic, attempt="1") == 1
    # Replaying the dead letter counts once, and a second run replays nothing more.
    for _ in range(2):
        report = replay(kafka_broker, f"{topic}.dlq", rate=None)
    assert report.already_replayed == 1
    assert value("kops_dlq_replayed_total", dlq=f"{topic}.dlq") == 1


# --------------------------------------------------------------------------- fan-out


def test_fanout_forwarded_remaining_and_eta(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    source, group = f"mfan-{tag}", f"mfan-g-{tag}"
    admin.create_topic(kafka_broker, source, 2)
    producer = Producer({"bootstrap.servers": kafka_broker})
    for i in range(50):
        producer.produce(source, f"v{i}".encode(), key=str(i).encode())
    assert producer.flush(10) == 0
    seen: list[float] = []
    report = fanout(
        kafka_broker, source, group, f"{source}.wide", 8, start="earliest",
        progress=lambda _p: seen.append(value("kops_fanout_remaining_records", source=source)),
    )  # fmt: skip
    assert report.forwarded == 50 and report.caught_up
    assert value("kops_fanout_forwarded_total", source=source) == 50
    assert seen and max(seen) <= 50  # set while it ran, never above the backlog
    assert value("kops_fanout_remaining_records", source=source) == 0
    assert value("kops_fanout_eta_seconds", source=source) == 0


# --------------------------------------------------------------------------- idempotent


def test_idempotent_duplicates_and_expired_leases(tmp_path: Path) -> None:
    ns = f"mstore-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "d.db"
    # A consumer that died holding a claim: the next one takes it over once the lease ends.
    assert SQLiteStore(path).claim(f"{ns}|pos:orders/0/1", "dead", 0.2) is not None
    once = Idempotent(path, namespace=ns, lease=0.2)
    record = Record("orders", 0, 1, value=b"v")
    assert once.process(record, lambda r: "ran").taken_over
    assert once.process(record, lambda r: "ran").duplicate
    assert once.process(record, lambda r: "ran").duplicate
    assert value("kops_idempotent_duplicates_skipped_total", store=ns) == 2
    assert value("kops_idempotent_leases_expired_total", store=ns) == 1


# --------------------------------------------------------------------------- lag job


def test_lag_job_sets_records_and_seconds(kafka_broker: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group = f"mlag-{tag}", f"mlag-g-{tag}"
    admin.create_topic(kafka_broker, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_broker})
    for i in range(10):
        producer.produce(topic, f"v{i}".encode(), partition=0)
    assert producer.flush(10) == 0
    with AdminSession(kafka_broker) as session:
        alter_group_offsets(session, group, {(topic, 0): 3})
    context = JobContext(
        settings=ClientSettings(bootstrap=kafka_broker), name="lag", kind="consumer-lag",
        periodic=True,
    )  # fmt: skip
    job = consumer_lag_job({"groups": [group, f"never-{tag}"], "worker_groups": False}, context)
    labels = {"group": group, "topic": topic, "partition": "0"}
    try:
        job()
        assert REGISTRY.get_sample_value("kafka_consumergroup_group_lag", labels) == 7
        seconds = REGISTRY.get_sample_value("kafka_consumergroup_group_lag_seconds", labels)
        assert seconds is not None and 0 < seconds < 60
        assert context.detail is not None and "lag 7 records" in context.detail
        # Caught up: both go to 0.
        with AdminSession(kafka_broker) as session:
            alter_group_offsets(session, group, {(topic, 0): 10})
        job()
        assert REGISTRY.get_sample_value("kafka_consumergroup_group_lag", labels) == 0
        assert REGISTRY.get_sample_value("kafka_consumergroup_group_lag_seconds", labels) == 0
    finally:
        job.close()
