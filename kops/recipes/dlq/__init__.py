"""Dead-letter topics: what kops writes on a dead letter, one reader for every DLQ format,
and the operator's tools (list, inspect, replay, purge).

The retry wrapper in :mod:`kops.recipes.retry` sends a record here once it is out of
retries (or fails with a fatal error). The dead-letter record keeps the original key, value
and headers (minus kops's own ``kops.retry.*``/``kops.delay.*`` bookkeeping) and adds, as
UTF-8 text (times in epoch milliseconds):

====================================  ====================================================
``kops.dlq.original.topic``           topic the record was first consumed from
``kops.dlq.original.partition``       its partition
``kops.dlq.original.offset``          its offset
``kops.dlq.original.timestamp-ms``    its timestamp
``kops.dlq.group``                    consumer group whose handler failed
``kops.dlq.exception.class``          ``module.QualName`` (builtins without a module)
``kops.dlq.exception.message``        ``str(exception)``
``kops.dlq.exception.stacktrace``     the formatted traceback, causes included
``kops.dlq.attempts``                 deliveries to the handler (1 + retry tiers taken)
``kops.dlq.first-failure-ms``         when the first delivery failed
``kops.dlq.failed-at-ms``             when the record was dead-lettered
``kops.dlq.reason``                   fatal | non-retryable | retries-exhausted | retry-budget
====================================  ====================================================

Reading a DLQ (:meth:`DeadLetter.from_record`) also understands Spring Kafka's
``kafka_dlt-*`` headers (numbers there are big-endian binary ints/longs) and Kafka
Connect's ``__connect.errors.*`` headers, and normalises all three into one view.

Replay-once: each replayed dead letter is marked in a compacted ``<dlq>.replayed`` topic,
keyed by ``partition:offset:timestamp``. Per-record markers (unlike a consumer group's
single committed offset per partition) survive filters: replaying ``--exception A`` today
and ``--exception B`` tomorrow replays each record once. A marker is written *before* the
record is re-sent (state ``started``) and completed after delivery (``done``), so a crash in
between never replays twice; such records are reported as in doubt instead. With
``exactly_once`` a batch's records and their ``done`` markers are one transaction: nothing
is ever in doubt, and a run killed midway is resumed by the next, each record once.

Retry headers (``kops.retry.*``), the Spring/Connect mapping and the worker job kinds
(``retry-consumer``, ``dlq-replay`` in :mod:`kops.worker.jobs.dlq`): ``recipes/dlq.md``.
"""

from kops.recipes.dlq.ops import (
    DlqTopic,
    ExceptionSummary,
    InspectReport,
    PurgeResult,
    inspect,
    list_dlq_topics,
    purge,
)
from kops.recipes.dlq.records import (
    DLQ_NAME_SUFFIXES,
    REPLAYED_SUFFIX,
    DeadLetter,
    dead_letter_headers,
    exception_name,
    looks_like_dlq,
    read_dead_letters,
    replay_state_topic,
)
from kops.recipes.dlq.replay import ReplayFilter, ReplayReport, replay

__all__ = [
    "DLQ_NAME_SUFFIXES",
    "REPLAYED_SUFFIX",
    "DeadLetter",
    "DlqTopic",
    "ExceptionSummary",
    "InspectReport",
    "PurgeResult",
    "ReplayFilter",
    "ReplayReport",
    "dead_letter_headers",
    "exception_name",
    "inspect",
    "list_dlq_topics",
    "looks_like_dlq",
    "purge",
    "read_dead_letters",
    "replay",
    "replay_state_topic",
]
