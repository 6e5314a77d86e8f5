"""The asyncio inter-broker client against a real kops broker (and the blocking one)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kio.schema.api_versions.v3.response import ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v11.response import FetchResponse
from kio.schema.metadata.v8.response import MetadataResponse

from kops.broker.dispatch import api_table
from kops.protocol.async_client import (
    AsyncBrokerClient,
    BrokerConnectionError,
    ClientClosedError,
    ConnectionLostError,
    RequestError,
    RequestTimeoutError,
)
from kops.protocol.batch import build_batch
from kops.protocol.client import send_request
from kops.testing import async_wait_until, run_broker
from tests.protocol import kio_requests as rq


def _split(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.rpartition(":")
    return host, int(port)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _BrokerInThread:
    """run_broker() started and stopped from async tests (off the event loop)."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.port = port
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> str:
        stack = contextlib.ExitStack()
        bootstrap = stack.enter_context(run_broker(self.data_dir, port=self.port))
        self.port = _split(bootstrap)[1]
        self._stack = stack
        return bootstrap

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[_BrokerInThread]:
    broker = _BrokerInThread(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_api_versions_match_the_served_table(kafka_broker: str) -> None:
    async def run() -> ApiVersionsResponse:
        async with AsyncBrokerClient(*_split(kafka_broker)) as client:
            return await client.send(rq.api_versions(), expect=ApiVersionsResponse)

    response = asyncio.run(run())
    assert response.error_code == ErrorCode.none
    served = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert served == {key: (api.min_version, api.max_version) for key, api in api_table().items()}


def test_metadata_creates_and_describes_a_topic(kafka_broker: str) -> None:
    topic = f"async-{uuid.uuid4().hex[:8]}"

    async def run() -> MetadataResponse:
        async with AsyncBrokerClient(*_split(kafka_broker)) as client:
            return await client.send(rq.metadata(topic, auto_create=True), expect=MetadataResponse)

    response = asyncio.run(run())
    assert [b.port for b in response.brokers] == [_split(kafka_broker)[1]]
    (described,) = response.topics
    assert described.name == topic
    assert described.error_code == ErrorCode.none
    assert [p.partition_index for p in described.partitions] == [0]


def test_expect_must_match_the_request_version(kafka_broker: str) -> None:
    async def run() -> None:
        async with AsyncBrokerClient(*_split(kafka_broker)) as client:
            with pytest.raises(TypeError, match="ApiVersionsResponse"):
                await client.send(rq.api_versions(), expect=MetadataResponse)

    asyncio.run(run())


def test_pipelined_requests_on_one_connection(kafka_broker: str) -> None:
    """Many requests in flight at once on one socket, each gets its own answer."""
    topic = f"pipe-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        async with AsyncBrokerClient(*_split(kafka_broker)) as client:
            await client.send(rq.create_topic(topic))
            # A long-polling fetch at the head of the pipeline holds back the
            # broker's answers (it answers one connection in order), so every
            # request below is provably in flight at the same time.
            head = asyncio.create_task(
                client.send(rq.fetch(topic, max_wait_ms=300), expect=FetchResponse)
            )
            tasks = []
            for i in range(100):
                if i % 2:
                    tasks.append(asyncio.create_task(client.send(rq.api_versions())))
                else:
                    tasks.append(asyncio.create_task(client.send(rq.metadata(topic))))
            await async_wait_until(lambda: client.in_flight == 101, timeout=5)
            responses = await asyncio.gather(*tasks)
            fetched = await head
            assert client.in_flight == 0
            assert client.connects == 1
            for i, response in enumerate(responses):
                if i % 2:
                    assert isinstance(response, ApiVersionsResponse)
                else:
                    assert isinstance(response, MetadataResponse)
                    assert [t.name for t in response.topics] == [topic]
            assert fetched.responses[0].partitions[0].records is None or not (
                fetched.responses[0].partitions[0].records
            )

    asyncio.run(run())


def test_large_fetch_response_arrives_whole(kafka_broker: str) -> None:
    """A response far larger than the receive buffer (its own frame buffer)."""
    topic = f"large-{uuid.uuid4().hex[:8]}"
    values = [bytes([i]) * 100_000 for i in range(9)]
    batch = build_batch([(None, v, []) for v in values])

    async def run() -> bytes:
        async with AsyncBrokerClient(*_split(kafka_broker)) as client:
            await client.send(rq.create_topic(topic))
            produced = await client.send(rq.produce(topic, batch))
            assert produced.responses[0].partition_responses[0].error_code == ErrorCode.none
            fetched = await client.send(rq.fetch(topic), expect=FetchResponse)
            records = fetched.responses[0].partitions[0].records
            assert records is not None
            return bytes(records)

    records = asyncio.run(run())
    assert len(records) == len(batch)
    assert records[61:] == batch[61:]  # all but the header (base offset, epoch, CRC rewritten)


def test_request_timeout_keeps_the_connection(kafka_broker: str) -> None:
    topic = f"slow-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        async with AsyncBrokerClient(*_split(kafka_broker)) as client:
            await client.send(rq.create_topic(topic))
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError) as caught:
                await client.send(rq.fetch(topic, max_wait_ms=1500), timeout=0.2)
            assert 0.15 < time.monotonic() - started < 1.0
            assert caught.value.retriable
            assert isinstance(caught.value, TimeoutError)
            # The late fetch answer is recognised and dropped; the next request
            # on the same connection gets its own answer.
            response = await client.send(rq.api_versions(), timeout=10)
            assert isinstance(response, ApiVersionsResponse)
            assert client.connects == 1
            assert client.in_flight == 0

    asyncio.run(run())


def test_reconnects_when_the_broker_comes_back_on_the_same_port(
    own_broker: _BrokerInThread,
) -> None:
    topic = f"back-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        client = AsyncBrokerClient("127.0.0.1", own_broker.port, backoff_max=0.2)
        async with client:
            await client.send(rq.create_topic(topic))
            # A request in flight when the broker goes away fails, retriably.
            in_flight = asyncio.create_task(client.send(rq.fetch(topic, max_wait_ms=5000)))
            await async_wait_until(lambda: client.in_flight == 1)
            await asyncio.to_thread(own_broker.stop)
            with pytest.raises(ConnectionLostError) as lost:
                await in_flight
            assert lost.value.retriable
            await async_wait_until(lambda: not client.connected)

            # While it is down, a request keeps retrying the connect with backoff...
            attempts = client.connect_attempts
            pending = asyncio.create_task(client.send(rq.metadata(topic), timeout=30))
            await async_wait_until(lambda: client.connect_attempts >= attempts + 3)
            assert not pending.done()
            # ...and succeeds once the broker is back on the same port.
            restarted = threading.Thread(target=own_broker.start)
            restarted.start()
            response = await asyncio.wait_for(pending, 30)
            await asyncio.to_thread(restarted.join)
            assert isinstance(response, MetadataResponse)
            assert [t.name for t in response.topics] == [topic]
            assert client.connects == 2
            assert client.connected

    asyncio.run(run())


def test_closed_port_fails_retriably_within_the_connect_timeout() -> None:
    port = _closed_port()

    async def run() -> None:
        async with AsyncBrokerClient("127.0.0.1", port, connect_timeout=0.6) as client:
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError) as caught:
                await client.send(rq.api_versions())
            elapsed = time.monotonic() - started
            assert elapsed < 2.0
            assert caught.value.retriable
            assert isinstance(caught.value, ConnectionError)
            assert "attempts" in str(caught.value)  # retried with backoff, then gave up
            assert f"127.0.0.1:{port}" in str(caught.value)

    asyncio.run(run())


def test_request_timeout_bounds_the_connect_too() -> None:
    port = _closed_port()

    async def run() -> None:
        async with AsyncBrokerClient("127.0.0.1", port, connect_timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError):
                await client.send(rq.api_versions(), timeout=0.3)
            assert time.monotonic() - started < 1.5

    asyncio.run(run())


def test_close_fails_requests_in_flight_and_later_ones(kafka_broker: str) -> None:
    topic = f"close-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        client = AsyncBrokerClient(*_split(kafka_broker))
        await client.send(rq.create_topic(topic))
        in_flight = asyncio.create_task(client.send(rq.fetch(topic, max_wait_ms=5000)))
        await async_wait_until(lambda: client.in_flight == 1)
        await client.close()
        with pytest.raises(ClientClosedError):
            await in_flight
        with pytest.raises(ClientClosedError):
            await client.send(rq.api_versions())
        assert not client.connected

    asyncio.run(run())


def test_blocking_client_shares_the_framing(kafka_broker: str) -> None:
    response = send_request(*_split(kafka_broker), rq.api_versions())
    assert isinstance(response, ApiVersionsResponse)
    assert response.error_code == ErrorCode.none
    with pytest.raises(RequestError) as caught:
        send_request("127.0.0.1", _closed_port(), rq.api_versions(), timeout=2)
    assert isinstance(caught.value, BrokerConnectionError)
    assert caught.value.retriable
