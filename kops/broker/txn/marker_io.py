"""Writing a transaction's markers: in partitions this broker leads, and through other leaders.

`write_here` is a partition leader's part, the same for the coordinator's own
partitions and for a WriteTxnMarkers from a coordinator elsewhere: append the
marker, wait until the partition's ISR has it (acks=all: a marker only the old
leader had would be lost with it, and the transaction recorded complete without
it), and for a `__consumer_offsets` partition tell the group coordinator, whose
pending transactional offsets of that producer become committed or are dropped.

`MarkerChannel` sends WriteTxnMarkers to other brokers over the inter-broker
client (kops.protocol.async_client, as the replica fetchers use), one pipelined
connection per broker; what an answer means is kops.broker.txn.markers'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from kio.schema.errors import ErrorCode
from kio.schema.write_txn_markers.v1 import response as markers_response

from kops.broker.cluster.partition import Partition
from kops.broker.cluster.peer_clients import PeerClients
from kops.broker.groups.storage import OFFSETS_TOPIC
from kops.broker.txn.markers import TopicPartition, marker_request, marker_results
from kops.errors import ApiError
from kops.protocol.errors import RequestError

__all__ = ["MARKER_TIMEOUT_S", "MarkerChannel", "write_here"]

log = logging.getLogger("kops.broker.txn")

# How long a leader waits for its ISR to take a marker before answering
# REQUEST_TIMED_OUT (the coordinator then tries again, the same marker once more).
MARKER_TIMEOUT_S = 5.0
# Beyond the leader's own wait: its answer is on the way.
_ANSWER_GRACE_S = 2.0


class MarkerBroker(Protocol):
    @property
    def node_id(self) -> int: ...

    def leader_partition(
        self, topic: str, index: int, current_leader_epoch: int = -1
    ) -> Partition | ErrorCode: ...

    def transaction_completed(self, index: int, producer_id: int, commit: bool) -> None: ...


async def write_here(
    broker: MarkerBroker,
    producer_id: int,
    producer_epoch: int,
    commit: bool,
    coordinator_epoch: int,
    partitions: Iterable[TopicPartition],
    timeout: float = MARKER_TIMEOUT_S,
) -> dict[TopicPartition, ErrorCode]:
    """The producer's marker in each partition this broker leads: each one's code
    once its ISR has the marker (or why not)."""
    codes: dict[TopicPartition, ErrorCode] = {}
    written: list[tuple[TopicPartition, Partition, int]] = []
    for tp in partitions:
        found = broker.leader_partition(*tp)
        if isinstance(found, ErrorCode):
            codes[tp] = found
            continue
        try:
            offset = found.write_marker(producer_id, producer_epoch, commit, coordinator_epoch)
        except ApiError as exc:
            log.warning(
                "could not write the %s marker of producer %d to %s-%d: %s",
                "commit" if commit else "abort",
                producer_id,
                *tp,
                exc,
            )
            codes[tp] = exc.error_code
        except Exception:
            log.exception("could not write a marker of producer %d to %s-%d", producer_id, *tp)
            codes[tp] = ErrorCode.unknown_server_error
        else:
            written.append((tp, found, offset))
    replicated = await asyncio.gather(
        *(p.wait_committed(offset, broker.node_id, timeout) for _, p, offset in written)
    )
    for (tp, _, _), code in zip(written, replicated, strict=True):
        codes[tp] = code
        if code == ErrorCode.none and tp[0] == OFFSETS_TOPIC:
            broker.transaction_completed(tp[1], producer_id, commit)
    return codes


class MarkerChannel:
    """WriteTxnMarkers to the leaders on other brokers."""

    def __init__(self, node_id: int, endpoint: Callable[[int], tuple[str, int] | None]) -> None:
        self._clients = PeerClients(endpoint, f"kops-txn-markers-{node_id}")

    async def send(
        self,
        broker_id: int,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
        partitions: tuple[TopicPartition, ...],
    ) -> dict[TopicPartition, ErrorCode]:
        """Each partition's answer from broker `broker_id`; NETWORK_EXCEPTION for all of
        them when it could not be asked or did not answer."""
        client = self._clients.get(broker_id)
        if client is None:
            return dict.fromkeys(partitions, ErrorCode.broker_not_available)
        request = marker_request(producer_id, producer_epoch, commit, coordinator_epoch, partitions)
        try:
            response = await client.send(
                request,
                timeout=MARKER_TIMEOUT_S + _ANSWER_GRACE_S,
                expect=markers_response.WriteTxnMarkersResponse,
            )
        except RequestError as exc:
            log.info("WriteTxnMarkers to broker %d failed: %s", broker_id, exc)
            return dict.fromkeys(partitions, ErrorCode.network_exception)
        return marker_results(response, partitions)

    async def close(self) -> None:
        await self._clients.close()
