"""Capture golden request/response frames from real Kafka clients.

    .venv/bin/python tests/protocol/capture_frames.py [--out DIR]

Starts a kops broker that advertises a small recording TCP proxy on loopback
(so every connection, bootstrap or not, goes through the proxy), drives it
with confluent-kafka (librdkafka), kafka-python (auto-negotiated and pinned
to older broker versions, which makes it send older API versions) and
aiokafka, and writes one request frame, and its response frame, per
(api key, api version) to

    DIR/<api_name>-v<version>.request.bin     (size prefix included: the exact wire bytes)
    DIR/<api_name>-v<version>.response.bin    (absent when the broker sent none)
    DIR/manifest.json                          (who sent what; versions outside the served table)

Of the many frames seen per (key, version) the one kept is the one with the
largest response under 64 KiB (the most populated structures: a Fetch with
records, a JoinGroup with members), ties going to the first seen. Topic,
group and client names are fixed, payloads small; timestamps, member ids,
producer ids and the cluster id differ from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kio.schema.index import api_key_map  # noqa: E402

from kops.broker.broker import Broker  # noqa: E402
from kops.broker.dispatch import api_table  # noqa: E402
from kops.testing import TEST_CONFIG  # noqa: E402

log = logging.getLogger("capture")

DEFAULT_OUT = Path(__file__).resolve().parent / "golden"
MAX_KEPT_FRAME = 64 * 1024
_HEADER = struct.Struct(">hhi")
_SIZE = struct.Struct(">i")


def golden_name(api_key: int, api_version: int) -> str:
    return f"{api_key_map[api_key]}-v{api_version}"


# ---- recording ---------------------------------------------------------------


@dataclass
class Captured:
    api_key: int
    api_version: int
    client_id: str | None
    request: bytes
    response: bytes | None
    outcome: str  # "answered", "no response" (acks=0) or "connection closed"


@dataclass
class Recorder:
    served: dict[int, tuple[int, int]]
    kept: dict[tuple[int, int], Captured] = field(default_factory=dict)
    seen: Counter[tuple[int, int]] = field(default_factory=Counter)
    senders: dict[tuple[int, int], set[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offer(self, frame: Captured) -> None:
        pair = (frame.api_key, frame.api_version)
        with self.lock:
            self.seen[pair] += 1
            self.senders.setdefault(pair, set()).add(frame.client_id or "")
            current = self.kept.get(pair)
            if current is None or _score(frame) > _score(current):
                self.kept[pair] = frame

    def is_served(self, pair: tuple[int, int]) -> bool:
        versions = self.served.get(pair[0])
        return versions is not None and versions[0] <= pair[1] <= versions[1]


def _score(frame: Captured) -> tuple[int, int, int, int]:
    outcome = {"answered": 2, "no response": 1}.get(frame.outcome, 0)
    fits = int(
        len(frame.request) <= MAX_KEPT_FRAME and len(frame.response or b"") <= MAX_KEPT_FRAME
    )
    response = len(frame.response or b"") if fits else -len(frame.response or b"")
    return (fits, outcome, response, -len(frame.request))


def _client_id(payload: bytes) -> str | None:
    # Request header v1/v2: key, version, correlation id, then a nullable int16 string.
    if len(payload) < 10:
        return None
    (length,) = struct.unpack_from(">h", payload, 8)
    if length < 0:
        return None
    return payload[10 : 10 + length].decode("utf-8", "replace")


class RecordingProxy:
    """Forwards every connection to the broker, recording each frame in both directions."""

    def __init__(self, recorder: Recorder, sock: socket.socket, upstream: tuple[str, int]) -> None:
        self.recorder = recorder
        self.sock = sock
        self.upstream = upstream
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, sock=self.sock, limit=1 << 22)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._forward(creader, cwriter)
        except asyncio.CancelledError:
            pass  # proxy stopping (a cancelled handler task makes asyncio log noise)
        finally:
            self.tasks.discard(task)

    async def _forward(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream, limit=1 << 22)
        except OSError:
            cwriter.close()
            return
        pending: dict[int, tuple[int, int, str | None, bytes]] = {}
        order: list[int] = []

        async def requests() -> None:
            while True:
                size = await creader.readexactly(4)
                payload = await creader.readexactly(_SIZE.unpack(size)[0])
                key, version, correlation_id = _HEADER.unpack_from(payload, 0)
                pending[correlation_id] = (key, version, _client_id(payload), size + payload)
                order.append(correlation_id)
                uwriter.write(size + payload)
                await uwriter.drain()

        async def responses() -> None:
            while True:
                size = await ureader.readexactly(4)
                payload = await ureader.readexactly(_SIZE.unpack(size)[0])
                (correlation_id,) = _SIZE.unpack_from(payload, 0)
                # Kafka answers in order: anything sent before this one and still
                # pending got no response (Produce with acks=0).
                while order:
                    earlier = order.pop(0)
                    entry = pending.pop(earlier, None)
                    if earlier == correlation_id:
                        if entry is not None:
                            self._offer(entry, size + payload, "answered")
                        break
                    if entry is not None:
                        self._offer(entry, None, "no response")
                cwriter.write(size + payload)
                await cwriter.drain()

        pumps = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(BaseException):
                    await pump
            for correlation_id in order:
                entry = pending.pop(correlation_id, None)
                if entry is not None:
                    self._offer(entry, None, "connection closed")
            for writer in (cwriter, uwriter):
                writer.close()

    def _offer(
        self, entry: tuple[int, int, str | None, bytes], response: bytes | None, outcome: str
    ) -> None:
        key, version, client_id, request = entry
        self.recorder.offer(Captured(key, version, client_id, request, response, outcome))


class BrokerBehindProxy:
    """A kops broker advertising the proxy's address, both on one loop in a thread."""

    def __init__(self, data_dir: Path, recorder: Recorder) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.recorder = recorder
        self.loop = asyncio.new_event_loop()
        self.broker = Broker(
            data_dir,
            host="127.0.0.1",
            port=0,
            advertise=("127.0.0.1", self.port),
            config=TEST_CONFIG,
        )
        self.proxy: RecordingProxy | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="broker", daemon=True)

    def __enter__(self) -> BrokerBehindProxy:
        self.thread.start()

        async def start() -> None:
            await self.broker.start()
            self.proxy = RecordingProxy(self.recorder, self.sock, ("127.0.0.1", self.broker.port))
            await self.proxy.start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self.proxy is not None:
                await self.proxy.stop()
            await self.broker.stop()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ---- driving real clients ------------------------------------------------------

ScenarioFn = Callable[[str], None]


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        log.warning("  %s failed: %s", what, str(exc).splitlines()[0] if str(exc) else repr(exc))
        log.debug("%s", traceback.format_exc())
    else:
        log.info("  %s ok (%.1fs)", what, time.monotonic() - started)


def until(condition: Callable[[], bool], timeout: float, poll: Callable[[], object]) -> bool:
    """Drive `poll` (a client's own poll call, which blocks briefly) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        poll()
    return condition()


def confluent_scenario(bootstrap: str) -> None:
    from confluent_kafka import (
        Consumer,
        ConsumerGroupTopicPartitions,
        Producer,
        TopicCollection,
        TopicPartition,
    )
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
        OffsetSpec,
    )

    base = {"bootstrap.servers": bootstrap, "client.id": "confluent-kafka", "log_level": 0}
    admin = AdminClient({**base, "client.id": "confluent-admin"})
    topic, other, group = "golden-rd", "golden-rd-other", "golden-rd-group"

    def wait(futures: dict[Any, Any]) -> None:
        for future in futures.values():
            future.result(15)

    with step("create topics"):
        wait(
            admin.create_topics(
                [
                    NewTopic(topic, 1, 1, config={"retention.ms": "86400000"}),
                    NewTopic(other, 2, 1),
                ],
                operation_timeout=10,
            )
        )
    with step("describe cluster"):
        admin.describe_cluster(include_authorized_operations=False).result(15)
    with step("describe topics"):
        wait(admin.describe_topics(TopicCollection([topic, other])))
    with step("describe configs"):
        wait(
            admin.describe_configs([ConfigResource("topic", topic), ConfigResource("broker", "0")])
        )
    with step("incremental alter configs"):
        entry = ConfigEntry(
            "retention.ms", "172800000", incremental_operation=AlterConfigOpType.SET
        )
        wait(
            admin.incremental_alter_configs(
                [ConfigResource("topic", topic, incremental_configs=[entry])]
            )
        )
    with step("create partitions"):
        wait(admin.create_partitions([NewPartitions(other, 3)], operation_timeout=10))

    with step("idempotent produce"):
        producer = Producer(
            {**base, "client.id": "confluent-producer", "enable.idempotence": True, "linger.ms": 5}
        )
        for i in range(3):
            producer.produce(
                topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"1")]
            )
        if producer.flush(15):
            raise RuntimeError("produce did not complete")
    with step("acks=0 produce"):
        producer = Producer({**base, "client.id": "confluent-producer-acks0", "acks": 0})
        producer.produce(other, value=b"fire-and-forget", partition=0)
        producer.flush(15)

    def consume(client_id: str, extra: dict[str, Any], want: int) -> None:
        consumer = Consumer(
            {
                **base,
                "client.id": client_id,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
                "fetch.wait.max.ms": 100,
                **extra,
            }
        )
        consumer.subscribe([topic])
        got: list[Any] = []

        def poll() -> None:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                got.append(message)

        until(lambda: len(got) >= want, 20, poll)
        until(lambda: False, 1.0, poll)  # a few heartbeats and empty long-poll fetches
        if got:
            consumer.commit(message=got[-1], asynchronous=False)
        consumer.close()  # LeaveGroup
        if len(got) < want:
            raise RuntimeError(f"consumed {len(got)} of {want}")

    with step("group consume"):
        consume("confluent-consumer", {}, 3)
    with step("group consume with committed offsets (static member)"):
        # Resuming from a committed offset that carries a leader epoch makes
        # librdkafka validate it with OffsetForLeaderEpoch.
        # (A static member leaves no LeaveGroup behind: it gets a group of its own.)
        consume(
            "confluent-consumer-static",
            {"group.instance.id": "golden-static", "group.id": group + "-static"},
            0,
        )

    with step("list offsets"):
        wait(
            admin.list_offsets(
                {
                    TopicPartition(topic, 0): OffsetSpec.latest(),
                    TopicPartition(topic, 0, 0): OffsetSpec.earliest(),
                }
            )
        )
    with step("list groups"):
        admin.list_consumer_groups().result(15)
    with step("describe groups"):
        wait(admin.describe_consumer_groups([group]))
    with step("list group offsets"):
        wait(admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]))
    with step("alter group offsets"):
        wait(
            admin.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 1)])]
            )
        )
    with step("delete records"):
        wait(admin.delete_records([TopicPartition(topic, 0, 1)]))
    with step("delete groups"):
        wait(admin.delete_consumer_groups([group]))
    with step("delete topics"):
        wait(admin.delete_topics([other], operation_timeout=10))


def kafka_python_scenario(api_version: tuple[int, ...] | None) -> ScenarioFn:
    def run(bootstrap: str) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
        from kafka.structs import OffsetAndMetadata

        label = "auto" if api_version is None else ".".join(map(str, api_version))
        suffix = label.replace(".", "_")
        topic, group = f"golden-kp-{suffix}", f"golden-kp-group-{suffix}"
        common: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "request_timeout_ms": 8000,
            "api_version": api_version,
        }
        admin = None
        with step("admin client"):
            admin = KafkaAdminClient(**common, client_id=f"kafka-python-admin-{label}")
        if admin is not None:
            with step("create topics"):
                admin.create_topics([NewTopic(topic, 1, 1), NewTopic(topic + "-x", 1, 1)])
            with step("describe configs"):
                admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            with step("create partitions"):
                admin.create_partitions({topic + "-x": NewPartitions(2)})
            with step("incremental alter configs"):
                admin.alter_configs(
                    [
                        ConfigResource(
                            ConfigResourceType.TOPIC, topic, configs={"retention.ms": "86400000"}
                        )
                    ],
                    incremental=True,
                    raise_on_unknown=False,
                )
        with step("produce"):
            producer = KafkaProducer(
                **common, client_id=f"kafka-python-producer-{label}", linger_ms=5
            )
            for i in range(3):
                producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
            producer.flush(10)
            producer.close(5)
        with step("group consume"):
            consumer = KafkaConsumer(
                topic,
                **common,
                client_id=f"kafka-python-consumer-{label}",
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=6000,
                heartbeat_interval_ms=300,
                fetch_max_wait_ms=100,
            )
            got: list[Any] = []

            def poll() -> None:
                for records in consumer.poll(200).values():
                    got.extend(records)

            until(lambda: len(got) >= 3, 15, poll)
            until(lambda: False, 1.0, poll)
            consumer.commit()
            consumer.close()
            if len(got) < 3:
                raise RuntimeError(f"consumed {len(got)} of 3")
        if admin is None:
            return
        tp = TopicPartition(topic, 0)
        with step("list groups"):
            admin.list_groups()
        with step("describe groups"):
            admin.describe_groups([group])
        with step("list group offsets"):
            admin.list_group_offsets(group)
        with step("alter group offsets"):
            admin.alter_group_offsets(group, {tp: OffsetAndMetadata(1, "", -1)})
        with step("delete group offsets"):
            admin.delete_group_offsets(group, [tp])
        with step("list partition offsets"):
            from kafka.admin import OffsetSpec

            admin.list_partition_offsets({tp: OffsetSpec.LATEST})
        with step("delete records"):
            admin.delete_records({tp: 1})
        with step("describe log dirs"):
            admin.describe_log_dirs()
        with step("describe cluster"):
            admin.describe_cluster()
        with step("delete groups"):
            admin.delete_groups([group])
        with step("delete topics"):
            admin.delete_topics([topic + "-x"])
        with step("close"):
            admin.close()

    return run


def kafka_python_old_group_scenario(api_version: tuple[int, ...]) -> ScenarioFn:
    """Very old pinned versions: metadata and the group protocol (their Fetch is not served)."""

    def run(bootstrap: str) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
        from kafka.structs import OffsetAndMetadata

        label = ".".join(map(str, api_version))
        group = f"golden-kp-old-{label.replace('.', '_')}"
        with step("metadata and group join"):
            consumer = KafkaConsumer(
                "golden-kp-auto",
                bootstrap_servers=bootstrap,
                api_version=api_version,
                client_id=f"kafka-python-consumer-{label}",
                group_id=group,
                session_timeout_ms=6000,
                heartbeat_interval_ms=300,
                request_timeout_ms=8000,
                enable_auto_commit=False,
            )
            consumer.topics()
            until(lambda: bool(consumer.assignment()), 8, lambda: consumer.poll(200))
            until(lambda: False, 1.0, lambda: consumer.poll(200))
            with step("commit"):
                consumer.commit({TopicPartition("golden-kp-auto", 0): OffsetAndMetadata(1, "", -1)})
            consumer.close()
        with step("admin: list and describe groups"):
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                api_version=api_version,
                client_id=f"kafka-python-admin-{label}",
                request_timeout_ms=8000,
            )
            admin.list_groups()
            admin.describe_groups([group])
            admin.close()

    return run


def aiokafka_scenario(bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    topic, group = "golden-aio", "golden-aio-group"

    async def main() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="aiokafka-admin")
        await admin.start()
        try:
            with step("create topics"):
                await admin.create_topics([NewTopic(topic, 1, 1), NewTopic(topic + "-x", 1, 1)])
            with step("describe cluster"):
                await admin.describe_cluster()
            with step("describe configs"):
                await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            with step("create partitions"):
                await admin.create_partitions({topic + "-x": NewPartitions(2)})
            with step("produce"):
                producer = AIOKafkaProducer(
                    bootstrap_servers=bootstrap,
                    client_id="aiokafka-producer",
                    enable_idempotence=True,
                )
                await producer.start()
                try:
                    for i in range(3):
                        await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i}".encode())
                finally:
                    await producer.stop()
            with step("group consume"):
                consumer = AIOKafkaConsumer(
                    topic,
                    bootstrap_servers=bootstrap,
                    client_id="aiokafka-consumer",
                    group_id=group,
                    auto_offset_reset="earliest",
                    enable_auto_commit=False,
                    session_timeout_ms=6000,
                    heartbeat_interval_ms=300,
                    fetch_max_wait_ms=100,
                )
                await consumer.start()
                try:
                    got = 0
                    deadline = time.monotonic() + 15
                    while got < 3 and time.monotonic() < deadline:
                        batches = await consumer.getmany(timeout_ms=200)
                        got += sum(len(v) for v in batches.values())
                    await consumer.getmany(timeout_ms=500)
                    await consumer.commit()
                    if got < 3:
                        raise RuntimeError(f"consumed {got} of 3")
                finally:
                    await consumer.stop()
            with step("list groups"):
                await admin.list_consumer_groups()
            with step("describe groups"):
                await admin.describe_consumer_groups([group])
            with step("list group offsets"):
                await admin.list_consumer_group_offsets(group)
            with step("delete records"):
                from aiokafka.admin.records_to_delete import RecordsToDelete
                from aiokafka.structs import TopicPartition

                await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(1)})
            with step("delete topics"):
                await admin.delete_topics([topic + "-x"])
        finally:
            await admin.close()

    asyncio.run(main())


SCENARIOS: list[tuple[str, ScenarioFn]] = [
    ("confluent-kafka (librdkafka)", confluent_scenario),
    ("kafka-python, negotiated", kafka_python_scenario(None)),
    *[
        (f"kafka-python, api_version={v}", kafka_python_scenario(v))
        for v in [
            (3, 0),
            (2, 8),
            (2, 7),
            (2, 6),
            (2, 5),
            (2, 4),
            (2, 3),
            (2, 2),
            (2, 1),
            (2, 0),
            (1, 1),
            (1, 0),
            (0, 11),
        ]
    ],
    *[
        (f"kafka-python, api_version={v} (group only)", kafka_python_old_group_scenario(v))
        for v in [(0, 10, 2), (0, 10, 1), (0, 10, 0), (0, 9)]
    ],
    ("aiokafka", aiokafka_scenario),
]


# ---- output ------------------------------------------------------------------


def write_golden(recorder: Recorder, out: Path, versions: dict[str, str]) -> dict[str, Any]:
    if out.exists():
        for old in out.glob("*.bin"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    frames: dict[str, Any] = {}
    unserved: dict[str, Any] = {}
    for pair in sorted(recorder.kept):
        frame = recorder.kept[pair]
        name = golden_name(*pair)
        info = {
            "api_key": pair[0],
            "api_version": pair[1],
            "client_id": frame.client_id,
            "outcome": frame.outcome,
            "frames_seen": recorder.seen[pair],
            "sent_by": sorted(recorder.senders[pair]),
        }
        if not recorder.is_served(pair):
            unserved[name] = info
            continue
        (out / f"{name}.request.bin").write_bytes(frame.request)
        if frame.response is not None:
            (out / f"{name}.response.bin").write_bytes(frame.response)
        info["request_bytes"] = len(frame.request)
        info["response_bytes"] = None if frame.response is None else len(frame.response)
        frames[name] = info
    manifest = {
        "about": "written by tests/protocol/capture_frames.py; frames include the size prefix",
        "clients": versions,
        "frames": frames,
        "sent_but_not_served": unserved,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def client_versions() -> dict[str, str]:
    import aiokafka
    import confluent_kafka
    import kafka

    return {
        "confluent-kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka-python": kafka.__version__,
        "aiokafka": aiokafka.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "aiokafka", "kops"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    served = {key: (api.min_version, api.max_version) for key, api in api_table().items()}
    recorder = Recorder(served)
    with (
        tempfile.TemporaryDirectory(prefix="kops-capture-") as data_dir,
        BrokerBehindProxy(Path(data_dir), recorder) as broker,
    ):
        log.info("broker behind recording proxy at %s", broker.bootstrap)
        for name, scenario in SCENARIOS:
            log.info("%s", name)
            started = time.monotonic()
            try:
                scenario(broker.bootstrap)
            except Exception as exc:
                log.warning("  scenario failed: %s", exc)
            log.info("  (%.1fs)", time.monotonic() - started)
    manifest = write_golden(recorder, args.out, client_versions())
    total = sum(p.stat().st_size for p in args.out.glob("*.bin"))
    captured = {(f["api_key"], f["api_version"]) for f in manifest["frames"].values()}
    missing = [
        f"{api_key_map[key]}-v{version}"
        for key, (low, high) in served.items()
        for version in range(low, high + 1)
        if (key, version) not in captured
    ]
    log.info("wrote %d frame pairs (%d bytes) to %s", len(manifest["frames"]), total, args.out)
    log.info("served but sent by no client: %s", ", ".join(missing) or "none")
    if manifest["sent_but_not_served"]:
        log.info("sent but not served: %s", ", ".join(manifest["sent_but_not_served"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
