"""Nothing acknowledged is lost: SIGKILL during acks=all produces, then restart."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from kops.testing import BrokerProcess, WaitTimeout, wait_until
from tests.broker.clients import consume_all, create_topic


def test_sigkill_during_produce_keeps_every_acked_record(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data", config={"log.segment.bytes": str(256 * 1024)})
    bootstrap = broker.start()
    try:
        create_topic(bootstrap, "durable", partitions=1)
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 60000,
            }
        )
        acked: list[int] = []
        lock = threading.Lock()

        def on_delivery(err: object, msg: object) -> None:
            if err is None:
                with lock:
                    acked.append(int(msg.value()))

        stop = threading.Event()

        def pump() -> None:
            i = 0
            while not stop.is_set():
                try:
                    producer.produce("durable", value=str(i).encode(), on_delivery=on_delivery)
                    i += 1
                except BufferError:
                    pass
                producer.poll(0)

        thread = threading.Thread(target=pump)
        thread.start()
        # Kill mid-stream: at 20,000 acknowledged records, or after 10 s whatever the count.
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: len(acked) >= 20_000, 10)
        broker.kill()
        time.sleep(0.3)  # not polling: the pump keeps producing into a dead broker a while
        stop.set()
        thread.join()
        with lock:
            acked_before_restart = list(acked)
        assert len(acked_before_restart) > 1000

        broker.start()  # same port and data dir: recovery runs
        producer.flush(30)  # in-flight retries now land once, thanks to idempotence
        with lock:
            all_acked = list(acked)

        messages = consume_all(broker.bootstrap, "durable", len(all_acked), timeout=30)
        values = [int(m.value()) for m in messages]
        assert [m.offset() for m in messages] == list(range(len(messages)))
        assert len(values) == len(set(values)), "a record is stored twice"
        positions = {v: i for i, v in enumerate(values)}
        missing = [v for v in all_acked if v not in positions]
        assert not missing, f"{len(missing)} acknowledged records lost"
        ordered = [positions[v] for v in all_acked]
        assert ordered == sorted(ordered), "acknowledged records out of order"
    finally:
        broker.stop()


def test_clean_restart_keeps_topics_offsets_and_configs(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data")
    bootstrap = broker.start()
    try:
        create_topic(bootstrap, "kept", partitions=3, config={"retention.ms": "123456"})
        from tests.broker.clients import produce

        produce(bootstrap, "kept", [(None, str(i).encode(), None, i % 3) for i in range(30)])
        broker.stop()
        broker.start()
        messages = consume_all(broker.bootstrap, "kept", 30, partitions=3)
        assert sorted(int(m.value()) for m in messages) == list(range(30))
        from confluent_kafka.admin import AdminClient, ConfigResource

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        resource = ConfigResource("topic", "kept")
        assert (
            admin.describe_configs([resource])[resource].result(10)["retention.ms"].value
            == "123456"
        )
    finally:
        broker.stop()
