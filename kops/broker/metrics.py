"""The broker's Prometheus metrics, under the names Kafka's JMX exporter gives them.

Each Broker owns a BrokerMetrics with its own CollectorRegistry (tests run several
brokers in one process). Two kinds of metric:

- per request, in the dispatcher: a prometheus-client Counter and Histogram per API
  (kafka_network_requestmetrics_*), a few microseconds a request;
- everything else is read from broker state when scraped, so the hot path pays
  nothing: per-topic traffic comes from plain integers the partitions keep (record
  counts from the offsets an append assigned, never from decoding records), log sizes,
  partition health, groups and purgatory sizes from the broker's own structures.

The broker is not thread-safe and the HTTP server runs in its own threads, so a scrape
hands the state read to the broker's event loop and waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from kio.schema.index import api_key_map
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kops.broker.cluster.partition import Partition
    from kops.broker.handlers import BrokerApi

__all__ = ["LATENCY_BUCKETS_MS", "BrokerMetrics", "MetricsBindError", "api_name"]

log = logging.getLogger("kops.broker.metrics")

#: Request latency buckets, in milliseconds (Kafka's TotalTimeMs is in ms too); the top
#: ones catch long-polling fetches and joins waiting for a rebalance.
LATENCY_BUCKETS_MS = (
    0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
)  # fmt: skip

#: How long a scrape waits for the event loop before giving up (HTTP 500).
SCRAPE_TIMEOUT_S = 5.0


class MetricsBindError(OSError):
    """The metrics HTTP server could not listen on the address asked for."""


def api_name(api_key: int) -> str:
    """Kafka's name for an API key (``Produce``, ``ListOffsets``), as its metrics label it."""
    snake = api_key_map.get(api_key)
    if snake is None:
        return f"Unknown{api_key}"
    return "".join(part.capitalize() for part in snake.split("_"))


class RequestMetrics:
    """Per-API request count and latency; one cached child per API key, so recording
    a request is two lock-protected additions and no label lookup."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "kafka_network_requestmetrics_requests",
            "Requests received, by API.",
            ["request"],
            registry=registry,
        )
        self._latency = Histogram(
            "kafka_network_requestmetrics_totaltimems",
            "Time from a request's arrival to its response, in milliseconds, by API.",
            ["request"],
            buckets=LATENCY_BUCKETS_MS,
            registry=registry,
        )
        self._children: dict[int, tuple[Counter, Histogram]] = {}

    def observe(self, api_key: int, seconds: float) -> None:
        children = self._children.get(api_key)
        if children is None:
            name = api_name(api_key)
            children = self._requests.labels(name), self._latency.labels(name)
            self._children[api_key] = children
        children[0].inc()
        children[1].observe(seconds * 1000.0)


class BrokerMetrics:
    """A broker's registry, its metrics and the HTTP server that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestMetrics(self.registry)
        # Replication bumps these through isr_shrank / isr_expanded; with one replica
        # per partition the ISR never changes, so they stay 0.
        self.isr_shrinks = 0
        self.isr_expands = 0
        self._state = _StateCollector()
        self.registry.register(self._state)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # ---- what replication will call ----------------------------------------------
    def isr_shrank(self, count: int = 1) -> None:
        """A partition's ISR lost `count` replicas (Kafka's IsrShrinksPerSec); on the loop."""
        self.isr_shrinks += count

    def isr_expanded(self, count: int = 1) -> None:
        """A partition's ISR gained `count` replicas (Kafka's IsrExpandsPerSec); on the loop."""
        self.isr_expands += count

    # ---- lifecycle ---------------------------------------------------------------
    def attach(self, broker: BrokerApi, loop: asyncio.AbstractEventLoop) -> None:
        """Start reporting `broker`'s state, read on `loop` (the broker's)."""
        self._state.bind(broker, self, loop)

    def serve(self, host: str, port: int) -> str:
        """Serve /metrics on host:port (port 0: a free one) in a daemon thread;
        returns the URL with the bound port. Raises MetricsBindError."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsBindError(
                exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._server, self._thread = server, thread
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{server.server_port}/metrics"
        log.info("metrics on %s", self.url)
        return self.url

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_port

    def close(self) -> None:
        """Stop the HTTP server and free its port (blocks up to its 0.5 s poll: call it
        off the event loop)."""
        self._state.unbind()
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)


class _StateCollector(Collector):
    """Scrape-time metrics read from the broker's state on its event loop."""

    def __init__(self) -> None:
        self._broker: BrokerApi | None = None
        self._metrics: BrokerMetrics | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(
        self, broker: BrokerApi, metrics: BrokerMetrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._broker, self._metrics, self._loop = broker, metrics, loop
        self._loop_thread = threading.get_ident()

    def unbind(self) -> None:
        self._broker = self._metrics = self._loop = None

    def collect(self) -> Iterable[Metric]:
        broker, metrics, loop = self._broker, self._metrics, self._loop
        if broker is None or metrics is None or loop is None:
            return []
        if threading.get_ident() == self._loop_thread:
            return _families(broker, metrics)
        future: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(_families(broker, metrics))
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed: the broker is gone
            return []
        return future.result(SCRAPE_TIMEOUT_S)


def _families(broker: BrokerApi, metrics: BrokerMetrics) -> list[Metric]:
    messages_in = CounterMetricFamily(
        "kafka_server_brokertopicmetrics_messagesin",
        "Records appended by producers, by topic.",
        labels=["topic"],
    )
    bytes_in = CounterMetricFamily(
        "kafka_server_brokertopicmetrics_bytesin",
        "Bytes of record batches appended by producers, by topic.",
        labels=["topic"],
    )
    bytes_out = CounterMetricFamily(
        "kafka_server_brokertopicmetrics_bytesout",
        "Bytes of record batches sent to fetchers, by topic.",
        labels=["topic"],
    )
    log_size = GaugeMetricFamily(
        "kafka_log_log_size", "Bytes on disk, by partition.", labels=["topic", "partition"]
    )
    under_replicated = offline = 0
    for topic, partitions in _partitions(broker):
        count_in = in_bytes = out_bytes = 0
        for partition in partitions:
            count_in += partition.messages_in
            in_bytes += partition.bytes_in
            out_bytes += partition.bytes_out
            log_size.add_metric([topic, str(partition.index)], partition.size_bytes)
            if partition.leader < 0:
                offline += 1
            elif len(partition.isr) < len(partition.replicas):
                under_replicated += 1
        messages_in.add_metric([topic], count_in)
        bytes_in.add_metric([topic], in_bytes)
        bytes_out.add_metric([topic], out_bytes)

    coordinator = broker.coordinator()
    groups = 0 if coordinator is None else len(coordinator.groups)
    rebalances = 0 if coordinator is None else coordinator.rebalances
    joins = 0 if coordinator is None else coordinator.pending_joins
    purgatory = GaugeMetricFamily(
        "kafka_server_delayedoperationpurgatory_purgatorysize",
        "Requests parked until they can be answered, by kind.",
        labels=["delayedoperation"],
    )
    # Produce is always 0 until acks=all waits for followers; Kafka exports it anyway.
    for kind, size in (("Produce", 0), ("Fetch", len(broker.fetches)), ("Rebalance", joins)):
        purgatory.add_metric([kind], size)

    return [
        messages_in,
        bytes_in,
        bytes_out,
        log_size,
        GaugeMetricFamily(
            "kafka_server_replicamanager_underreplicatedpartitions",
            "Partitions whose ISR is smaller than their replica set.",
            value=under_replicated,
        ),
        GaugeMetricFamily(
            "kafka_controller_kafkacontroller_offlinepartitionscount",
            "Partitions without a leader.",
            value=offline,
        ),
        # A lone broker is its own controller; in a cluster, the quorum leader is.
        GaugeMetricFamily(
            "kafka_controller_kafkacontroller_activecontrollercount",
            "1 on the broker that is the active controller.",
            value=int(broker.controller_id == broker.node_id),
        ),
        *_cluster_families(broker),
        CounterMetricFamily(
            "kafka_server_replicamanager_isrshrinks",
            "Replicas dropped from an ISR.",
            value=metrics.isr_shrinks,
        ),
        CounterMetricFamily(
            "kafka_server_replicamanager_isrexpands",
            "Replicas added to an ISR.",
            value=metrics.isr_expands,
        ),
        CounterMetricFamily(
            "kafka_coordinator_group_groupmetadatamanager_rebalances",
            "Completed group rebalances (generation bumps).",
            value=rebalances,
        ),
        GaugeMetricFamily(
            "kafka_coordinator_group_groupmetadatamanager_numgroups",
            "Consumer groups the coordinator holds.",
            value=groups,
        ),
        purgatory,
    ]


def _cluster_families(broker: BrokerApi) -> list[Metric]:
    """KRaft's raft-metrics on every quorum member, broker counts on the controller."""
    quorum, cluster = broker.quorum, broker.cluster
    if quorum is None or cluster is None:
        return []
    node = quorum.node
    raft = [
        ("current_leader", "The quorum leader's id (-1: none known).", node.leader_id),
        ("current_epoch", "The quorum's epoch as this node knows it.", node.epoch),
        ("high_watermark", "Committed end of the metadata log.", node.high_watermark),
        ("log_end_offset", "End of this node's metadata log.", node.log.end_offset),
    ]
    families: list[Metric] = [
        GaugeMetricFamily(
            f"kafka_server_raft_metrics_{name}", doc, value=-1 if value is None else value
        )
        for name, doc, value in raft
    ]
    if broker.controller_id == broker.node_id:
        brokers = cluster.image.brokers.values()
        fenced = sum(1 for b in brokers if b.fenced)
        families += [
            GaugeMetricFamily(
                "kafka_controller_kafkacontroller_activebrokercount",
                "Registered brokers that are not fenced (on the active controller).",
                value=len(brokers) - fenced,
            ),
            GaugeMetricFamily(
                "kafka_controller_kafkacontroller_fencedbrokercount",
                "Registered brokers that are fenced (on the active controller).",
                value=fenced,
            ),
        ]
    return families


def _partitions(broker: BrokerApi) -> Iterator[tuple[str, list[Partition]]]:
    for topic in broker.topic_names():
        yield topic, broker.partitions_of(topic)
