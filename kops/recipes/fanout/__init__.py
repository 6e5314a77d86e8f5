"""Backlog fan-out: forward a group's backlog to a topic with many partitions, then drain it
with many consumers.

A topic with 6 partitions and a backlog of millions can only be drained by 6 consumers. Fan-out
reads the backlog once, from the group's committed offsets, and writes it to a topic with (say)
64 partitions, which 64 consumers drain in parallel::

    from kops.recipes.fanout import backlog_status, fanout
    report = fanout("127.0.0.1:9092", "orders", "billing", "orders.fanout", partitions=64)
    print(report.forwarded, report.caught_up)
    print(backlog_status("127.0.0.1:9092", "billing").to_dict())

The CLI is ``kops backlog fanout`` / ``kops backlog status``; the worker job kind
``backlog-fanout`` (:mod:`kops.worker.jobs.fanout`) also starts the drain consumers.

Guarantees:

- **Per-key order.** A key always goes to the same target partition: Kafka's murmur2
  partitioner (:func:`partition_for_key`, the Java client's default, so real Kafka producers
  writing to the target agree), with the idempotent producer so retries never reorder.
  Records without a key keep their source partition's order (source partition ``p`` goes to
  target partition ``p % partitions``).
- **Nothing lost.** Forward, then commit: the source group's offsets move only past records
  whose delivery to the target was acknowledged (a contiguous watermark per source
  partition). A killed fan-out restarts from the last commit.
- **Duplicates are recognisable.** Records forwarded again after a crash (those acknowledged
  but not yet committed) carry the same ``kops.message.id`` header: the record's own if it had
  one, else ``<topic>/<partition>/<offset>`` of the source record. Drain consumers wrapped in
  :class:`kops.recipes.idempotent.Idempotent` apply each exactly once.
- **Or no duplicates at all**, with ``exactly_once`` (``--exactly-once``, job option
  ``exactly_once = true``): the source is read with read_committed, and each round (what was
  forwarded in ``commit_interval``, with the source offsets it advances and their metadata)
  is one transaction (:mod:`kops.recipes.fanout.transactional`). Drain consumers with
  ``isolation.level=read_committed`` see every source record once, however often the
  fan-out is killed; an aborted round is read and forwarded again. It needs a cluster that
  serves transactions (one that refuses them stops the fan-out with
  :class:`~kops.recipes.exactly_once.TransactionsUnsupported`), and two fan-outs of one
  group fence each other (the older stops with
  :class:`~kops.recipes.exactly_once.ProducerFenced`).

``until_caught_up`` stops once everything up to the source's end offsets *at start* is
forwarded and committed; without it the fan-out keeps following the source (and picks up
partitions added to it). The source group's commits carry the fan-out's settings as
metadata, which :func:`~kops.recipes.fanout.status.backlog_status` reads back.

The fan-out assigns the source partitions itself rather than joining the group: a restart
after a crash resumes at once, instead of waiting for the dead member's session to time out.
It refuses to start while the group has active members (stop the group's old consumers
first: both would process the backlog). Run one fan-out per group at a time.

A group with no committed offsets on the source has no backlog to resume: the fan-out
refuses it unless given a ``start`` (``"earliest"``: the whole topic, ``"latest"``: only new
records, or a time), rather than silently forwarding the whole topic.
"""

from kops.recipes.fanout.forward import BacklogFanout, fanout, parse_start, print_record
from kops.recipes.fanout.partitioner import murmur2, partition_for_key
from kops.recipes.fanout.report import METADATA_PREFIX, FanoutProgress, FanoutReport, parse_metadata
from kops.recipes.fanout.status import BacklogStatus, Side, backlog_status

__all__ = [
    "METADATA_PREFIX",
    "BacklogFanout",
    "BacklogStatus",
    "FanoutProgress",
    "FanoutReport",
    "Side",
    "backlog_status",
    "fanout",
    "murmur2",
    "parse_metadata",
    "parse_start",
    "partition_for_key",
    "print_record",
]
