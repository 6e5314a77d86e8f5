"""Header names kops writes on records, in one place.

Every recipe that stamps or reads a kops header imports the name from here,
so producers and consumers of a header never disagree. All values are UTF-8
strings; times are epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PREFIX = "kops."

# Identity: set once when kops first handles a record (delay send, retry,
# dead-lettering) and kept on every copy, so consumers can drop duplicates.
MESSAGE_ID = "kops.message.id"

# Delay queue.
DELAY_TARGET = "kops.delay.target"  # topic to deliver to when due
DELAY_DUE_MS = "kops.delay.due-ms"  # epoch ms when the record is due
DELAY_SENT_MS = "kops.delay.sent-ms"  # epoch ms when it was first sent
# On a delay dead letter: "<tier topic>/<partition>/<offset>" of the tier record it was read from.
DELAY_FROM = "kops.delay.from"

# Retry ladder.
RETRY_ATTEMPT = "kops.retry.attempt"  # attempts made so far (1 = the first failure)
RETRY_FIRST_FAILURE_MS = "kops.retry.first-failure-ms"
# The group whose handler failed: a retry that comes back to a shared source topic
# is for that group only; kops-wrapped consumers in other groups skip it.
RETRY_GROUP = "kops.retry.group"
# Where the record first failed, carried through the tiers for the dead letter.
RETRY_ORIGINAL_TOPIC = "kops.retry.original.topic"
RETRY_ORIGINAL_PARTITION = "kops.retry.original.partition"
RETRY_ORIGINAL_OFFSET = "kops.retry.original.offset"
RETRY_ORIGINAL_TIMESTAMP = "kops.retry.original.timestamp-ms"
RETRY_LAST_ERROR = "kops.retry.last-error"  # "ExceptionClass: message" of the last failure

# Dead letters: where the record came from and why it failed.
DLQ_ORIGINAL_TOPIC = "kops.dlq.original.topic"
DLQ_ORIGINAL_PARTITION = "kops.dlq.original.partition"
DLQ_ORIGINAL_OFFSET = "kops.dlq.original.offset"
DLQ_ORIGINAL_TIMESTAMP = "kops.dlq.original.timestamp-ms"
DLQ_GROUP = "kops.dlq.group"
DLQ_EXCEPTION_CLASS = "kops.dlq.exception.class"
DLQ_EXCEPTION_MESSAGE = "kops.dlq.exception.message"
DLQ_EXCEPTION_STACKTRACE = "kops.dlq.exception.stacktrace"
DLQ_ATTEMPTS = "kops.dlq.attempts"
DLQ_FIRST_FAILURE_MS = "kops.dlq.first-failure-ms"
DLQ_FAILED_AT_MS = "kops.dlq.failed-at-ms"
DLQ_REASON = "kops.dlq.reason"  # fatal | non-retryable | retries-exhausted | retry-budget

# Replay: "<dlq topic>/<partition>/<offset>" of the dead letter a record was replayed from.
REPLAY_OF = "kops.replay.of"

Headers = Sequence[tuple[str, bytes | str | None]]


def get(headers: Headers | None, name: str) -> str | None:
    """The last value of header `name` as text, or None."""
    if not headers:
        return None
    found = None
    for key, value in headers:
        if key == name:
            found = value
    if found is None:
        return None
    return found.decode("utf-8", "replace") if isinstance(found, bytes) else str(found)


def replace(
    headers: Headers | None, updates: dict[str, str | None]
) -> list[tuple[str, bytes | None]]:
    """A copy of `headers` with the named headers set (or removed when None)."""
    kept = [(k, _as_bytes(v)) for k, v in (headers or ()) if k not in updates]
    kept.extend((k, v.encode()) for k, v in updates.items() if v is not None)
    return kept


def without_prefix(
    headers: Headers | None, prefixes: Iterable[str]
) -> list[tuple[str, bytes | None]]:
    """A copy of `headers` without those whose name starts with any prefix."""
    prefixes = tuple(prefixes)
    return [(k, _as_bytes(v)) for k, v in (headers or ()) if not k.startswith(prefixes)]


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # A null header value stays null: Kafka distinguishes it from empty.
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()
