"""Transactional ids for the operator: list, describe, and abort a hanging transaction.

Kafka's ``kafka-transactions.sh`` in library form, over the Kafka protocol
(confluent-kafka has no admin call for these, so kops sends the requests itself,
built from kio's schemas, on plaintext listeners):

    from kops.transactions import list_transactions, describe_transaction, abort_transaction

    list_transactions("127.0.0.1:9092", states=["Ongoing"], min_duration_ms=60_000)
    describe_transaction("127.0.0.1:9092", "orders-etl")
    abort_transaction("127.0.0.1:9092", "orders-etl")   # fences its producer, aborts

``abort_transaction`` does what a restarted producer of the same transactional id
does: InitProducerId for the id. The coordinator bumps the epoch, which fences
the producer holding it (its next request fails with PRODUCER_FENCED), and aborts
the open transaction, so read_committed consumers move past it. It works the same
on Apache Kafka.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kio.schema.describe_transactions.v0 import request as describe_v0
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v1 import request as find_v1
from kio.schema.init_producer_id.v1 import request as init_v1
from kio.schema.list_transactions.v1 import request as list_v1
from kio.schema.types import ProducerId, TransactionalId
from kio.static.primitive import i8, i64

from kops.admin import describe_cluster_brokers
from kops.client import ClientSettings, KopsClientError
from kops.protocol.client import RequestError, send_request

__all__ = [
    "TransactionDetail",
    "TransactionSummary",
    "abort_transaction",
    "describe_transaction",
    "list_transactions",
]

# Kafka's transaction states (TransactionState.java), for filters and validation.
TRANSACTION_STATES = (
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
)
_TRANSACTION_KEY = i8(1)


@dataclass(frozen=True)
class TransactionSummary:
    transactional_id: str
    producer_id: int
    state: str
    coordinator: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TransactionDetail:
    transactional_id: str
    state: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    # Epoch ms the open transaction began; None when none is open.
    start_ms: int | None
    coordinator: int
    partitions: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partitions"] = [{"topic": t, "partition": p} for t, p in self.partitions]
        return data


def _settings(target: ClientSettings | str) -> ClientSettings:
    settings = ClientSettings.of(target)
    if not settings.plaintext:
        raise KopsClientError("transaction commands need a plaintext listener")
    return settings


def _first_address(settings: ClientSettings) -> str:
    return settings.bootstrap.split(",")[0].strip()


def _send(address: str, request: Any, settings: ClientSettings) -> Any:
    host, _, port = address.rpartition(":")
    try:
        return send_request(host, int(port), request, timeout=settings.timeout)
    except (RequestError, ValueError) as exc:
        raise KopsClientError(f"cannot reach {address}: {exc}") from None


def _coordinator(settings: ClientSettings, transactional_id: str) -> tuple[int, str]:
    """(node id, host:port) of the id's transaction coordinator."""
    request = find_v1.FindCoordinatorRequest(key=transactional_id, key_type=_TRANSACTION_KEY)
    deadline = time.monotonic() + settings.timeout
    while True:
        response = _send(_first_address(settings), request, settings)
        if response.error_code == ErrorCode.none:
            return int(response.node_id), f"{response.host}:{response.port}"
        if response.error_code != ErrorCode.coordinator_not_available:
            raise KopsClientError(
                f"no transaction coordinator for {transactional_id!r}: "
                f"{ErrorCode(response.error_code).name}"
            )
        if time.monotonic() > deadline:
            raise KopsClientError(f"no transaction coordinator for {transactional_id!r} yet")
        time.sleep(0.1)  # it is being created (the first FindCoordinator creates it)


def list_transactions(
    target: ClientSettings | str,
    states: list[str] | tuple[str, ...] = (),
    producer_ids: list[int] | tuple[int, ...] = (),
    min_duration_ms: int = -1,
) -> list[TransactionSummary]:
    """Every transactional id the cluster's coordinators hold, filtered by state (Kafka's
    names, any case), producer id, and how long the transaction has been open."""
    settings = _settings(target)
    by_lower = {s.lower(): s for s in TRANSACTION_STATES}
    unknown = [s for s in states if s.lower() not in by_lower]
    if unknown:
        raise KopsClientError(
            f"unknown transaction state {unknown[0]!r} (one of {', '.join(TRANSACTION_STATES)})"
        )
    request = list_v1.ListTransactionsRequest(
        state_filters=tuple(by_lower[s.lower()] for s in states),
        producer_id_filters=tuple(ProducerId(p) for p in producer_ids),
        duration_filter=i64(min_duration_ms),
    )
    _, brokers = describe_cluster_brokers(_first_address(settings), timeout=settings.timeout)
    found: list[TransactionSummary] = []
    for broker in brokers:
        if broker.fenced:
            continue
        response = _send(f"{broker.host}:{broker.port}", request, settings)
        if response.error_code != ErrorCode.none:
            raise KopsClientError(
                f"broker {broker.node_id} cannot list transactions: "
                f"{ErrorCode(response.error_code).name}"
            )
        found += [
            TransactionSummary(
                t.transactional_id, int(t.producer_id), t.transaction_state, broker.node_id
            )
            for t in response.transaction_states
        ]
    return sorted(found, key=lambda t: t.transactional_id)


def describe_transaction(target: ClientSettings | str, transactional_id: str) -> TransactionDetail:
    """The id's state at its coordinator; KopsClientError if it has none."""
    settings = _settings(target)
    node, address = _coordinator(settings, transactional_id)
    request = describe_v0.DescribeTransactionsRequest(
        transactional_ids=(TransactionalId(transactional_id),)
    )
    (state,) = _send(address, request, settings).transaction_states
    if state.error_code == ErrorCode.transactional_id_not_found:
        raise KopsClientError(f"no transactional id {transactional_id!r}")
    if state.error_code != ErrorCode.none:
        raise KopsClientError(
            f"cannot describe {transactional_id!r}: {ErrorCode(state.error_code).name}"
        )
    start = state.transaction_start_time
    start_ms = int(start.timestamp() * 1000) if start.timestamp() > 0 else None
    return TransactionDetail(
        transactional_id,
        state.transaction_state,
        int(state.producer_id),
        int(state.producer_epoch),
        int(state.transaction_timeout.total_seconds() * 1000),
        start_ms,
        node,
        [(t.topic, int(p)) for t in state.topics for p in t.partitions],
    )


def abort_transaction(
    target: ClientSettings | str, transactional_id: str, timeout_ms: int = 60_000
) -> TransactionDetail:
    """Fence the id's producer and abort its open transaction (see the module docstring);
    returns the id's state afterwards. `timeout_ms` becomes the id's transaction timeout,
    as a new producer's would."""
    settings = _settings(target)
    describe_transaction(settings, transactional_id)  # a clear error for an unknown id
    request = init_v1.InitProducerIdRequest(
        transactional_id=TransactionalId(transactional_id),
        transaction_timeout=datetime.timedelta(milliseconds=timeout_ms),
    )
    deadline = time.monotonic() + settings.timeout
    while True:
        _, address = _coordinator(settings, transactional_id)
        code = ErrorCode(_send(address, request, settings).error_code)
        if code == ErrorCode.none:
            return describe_transaction(settings, transactional_id)
        # The abort's markers are being written, or the coordinator moved: ask again.
        retriable = (
            ErrorCode.concurrent_transactions,
            ErrorCode.coordinator_load_in_progress,
            ErrorCode.not_coordinator,
            ErrorCode.coordinator_not_available,
        )
        if code not in retriable:
            raise KopsClientError(
                f"cannot abort the transaction of {transactional_id!r}: {code.name}"
            )
        if time.monotonic() > deadline:
            raise KopsClientError(
                f"the transaction of {transactional_id!r} is still ending: {code.name}"
            )
        time.sleep(0.1)
