"""Dead-letter records: the headers kops writes, and one reader for kops, Spring Kafka and
Kafka Connect dead letters (see :mod:`kops.recipes.dlq` for the header table)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kops.client import ClientSettings
from kops.consume import ConsumedRecord, StartAt, consume, decode_bytes
from kops.recipes import headers as h

DLQ_NAME_SUFFIXES = tuple(
    sep + word for word in ("dlq", "DLQ", "dlt", "DLT") for sep in (".", "-", "_")
)
#: RocketMQ names its DLQs ``%DLQ%<group>``; Confluent Cloud's connectors ``dlq-<connector>``.
_NAME_PREFIXES = ("%DLQ%", *(word + sep for word in ("dlq", "DLQ") for sep in (".", "-", "_")))
REPLAYED_SUFFIX = ".replayed"

# Headers whose presence means "this record is a dead letter", one per format.
EXCEPTION_HEADERS = (
    h.DLQ_EXCEPTION_CLASS,
    "kafka_dlt-exception-fqcn",
    "__connect.errors.exception.class.name",
)
# Bookkeeping dropped when a record is dead-lettered or replayed (a replay starts afresh).
BOOKKEEPING_PREFIXES = ("kops.retry.", "kops.delay.")
DLQ_PREFIXES = ("kops.dlq.", "kafka_dlt-", "retry_topic-", "__connect.errors.")

#: For reads that stop at the end: the broker answers a fetch at the end at once instead of
#: long-polling for new records (Kafka's default waits 500 ms before "end of partition").
SCAN_CONFIG = {"fetch.wait.max.ms": 20}

_MAX_MESSAGE = 8 * 1024
_MAX_STACKTRACE = 32 * 1024  # keeps a dead letter far below the default 1 MB record limit


def looks_like_dlq(name: str) -> bool:
    """True when a topic's name says it is a dead-letter topic."""
    return name.endswith(DLQ_NAME_SUFFIXES) or name.startswith(_NAME_PREFIXES)


def replay_state_topic(dlq_topic: str) -> str:
    return dlq_topic + REPLAYED_SUFFIX


def exception_name(exc: BaseException) -> str:
    """``ValueError`` for builtins and classes of the script being run (``__main__``), else
    ``package.module.QualName``."""
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def display_class(name: str | None) -> str | None:
    """A class name as shown and grouped: ``__main__.`` (a script's own module, which says
    nothing about where the class lives) is dropped."""
    if name is None:
        return None
    name = name.strip()
    return name.removeprefix("__main__.") or None


#: Exceptions that only wrap the real one: grouped and filtered by their cause instead.
#: Spring wraps every listener failure in ListenerExecutionFailedException; Kafka Connect
#: and plain Java wrap in ConnectException, ExecutionException and the like.
WRAPPER_CLASSES = frozenset(
    {
        "org.springframework.kafka.listener.ListenerExecutionFailedException",
        "org.springframework.kafka.listener.TimestampedException",
        "org.springframework.messaging.MessagingException",
        "org.springframework.messaging.converter.MessageConversionException",
        "org.apache.kafka.connect.errors.ConnectException",
        "java.util.concurrent.ExecutionException",
        "java.util.concurrent.CompletionException",
        "java.lang.reflect.InvocationTargetException",
        "java.lang.reflect.UndeclaredThrowableException",
    }
)
_WRAPPER_SIMPLE_NAMES = frozenset(n.rsplit(".", 1)[-1] for n in WRAPPER_CLASSES)


def is_wrapper(name: str | None) -> bool:
    """True for an exception class that only wraps its cause (by full or simple name)."""
    if not name:
        return False
    return name in WRAPPER_CLASSES or name.rsplit(".", 1)[-1] in _WRAPPER_SIMPLE_NAMES


_CAUSED_BY = "Caused by: "


def _stack_causes(stacktrace: str | None) -> list[tuple[str, str | None]]:
    """``(class, message)`` of each ``Caused by:`` line of a Java stack trace, outermost
    first."""
    out: list[tuple[str, str | None]] = []
    for line in (stacktrace or "").splitlines():
        line = line.strip()
        if not line.startswith(_CAUSED_BY):
            continue
        cls, sep, message = line[len(_CAUSED_BY) :].partition(":")
        cls = cls.strip()
        if cls and " " not in cls:
            out.append((cls, message.strip() if sep else None))
    return out


def _unwrap(
    top: str | None, message: str | None, cause_header: str | None, stacktrace: str | None
) -> tuple[str | None, str | None, str | None]:
    """``(class, message, wrapper)``: the first exception of the cause chain that is not a
    mere wrapper (Spring's cause header first, then the stack trace's ``Caused by:``)."""
    if not is_wrapper(top):
        return top, message, None
    chain = _stack_causes(stacktrace)
    if cause_header and (not chain or chain[0][0] != cause_header):
        chain.insert(0, (cause_header, None))
    for cls, cause_message in chain:
        if not is_wrapper(cls):
            return cls, cause_message or message, top
    return top, message, None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def dead_letter_headers(
    record_headers: h.Headers | None,
    exc: BaseException,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    group: str | None,
    attempts: int,
    first_failure_ms: int,
    reason: str,
    now_ms: int | None = None,
) -> list[tuple[str, bytes | None]]:
    """The headers of a dead letter: the record's own (minus bookkeeping) plus ``kops.dlq.*``."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    kept = h.without_prefix(record_headers, (*BOOKKEEPING_PREFIXES, "kops.dlq."))
    kept = [(k, v) for k, v in kept if k != h.MESSAGE_ID]
    stack = "".join(traceback.format_exception(exc))
    return h.replace(
        kept,
        {
            h.DLQ_ORIGINAL_TOPIC: topic,
            h.DLQ_ORIGINAL_PARTITION: str(partition),
            h.DLQ_ORIGINAL_OFFSET: str(offset),
            h.DLQ_ORIGINAL_TIMESTAMP: None if timestamp_ms is None else str(timestamp_ms),
            h.DLQ_GROUP: group,
            h.DLQ_EXCEPTION_CLASS: exception_name(exc),
            h.DLQ_EXCEPTION_MESSAGE: _clip(str(exc), _MAX_MESSAGE),
            h.DLQ_EXCEPTION_STACKTRACE: _clip(stack, _MAX_STACKTRACE),
            h.DLQ_ATTEMPTS: str(attempts),
            h.DLQ_FIRST_FAILURE_MS: str(first_failure_ms),
            h.DLQ_FAILED_AT_MS: str(now),
            h.DLQ_REASON: reason,
        },
    )


# --------------------------------------------------------------------------- reading


def _raw(headers: h.Headers, name: str) -> bytes | None:
    found = None
    for k, v in headers:
        if k == name:
            found = v.encode() if isinstance(v, str) else v
    return found


def _text(headers: h.Headers, name: str) -> str | None:
    raw = _raw(headers, name)
    return None if raw is None else raw.decode("utf-8", "replace")


def _number(headers: h.Headers, name: str, *, binary: bool = False) -> int | None:
    """A header as an int: decimal text, or (``binary``) a big-endian int/long as Spring
    writes them. Spring's values are always 4 or 8 raw bytes; anything else is read as text."""
    raw = _raw(headers, name)
    if raw is None:
        return None
    if binary and len(raw) in (4, 8):
        return int.from_bytes(raw, "big", signed=True)
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass
class DeadLetter:
    """One dead letter, the same whether kops, Spring Kafka or Kafka Connect wrote it."""

    record: ConsumedRecord
    format: str  # "kops" | "spring" | "connect" | "unknown"
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    original_timestamp_ms: int | None = None
    group: str | None = None
    exception_class: str | None = None
    exception_message: str | None = None
    stacktrace: str | None = None
    attempts: int | None = None
    first_failure_ms: int | None = None
    failed_at_ms: int | None = None
    reason: str | None = None
    #: Format-specific details: Spring's cause class and timestamp type, Connect's connector,
    #: task and stage.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def failed_ms(self) -> int | None:
        """When it was dead-lettered: the header when present, else the DLQ record's time."""
        return self.failed_at_ms if self.failed_at_ms is not None else self.record.timestamp

    @property
    def marker_key(self) -> str:
        # The timestamp guards against a DLQ deleted and re-created with offsets from 0.
        r = self.record
        return f"{r.partition}:{r.offset}:{r.timestamp if r.timestamp is not None else -1}"

    @classmethod
    def from_record(cls, record: ConsumedRecord) -> DeadLetter:
        """Read any format; the exception is the real cause (wrappers such as Spring's
        ListenerExecutionFailedException unwrapped, the wrapper kept in ``extra``)."""
        dl = cls._parse(record)
        name, message, wrapper = _unwrap(
            display_class(dl.exception_class),
            dl.exception_message,
            display_class(dl.extra.get("cause_class")),
            dl.stacktrace,
        )
        dl.exception_class, dl.exception_message = name, message
        if wrapper is not None:
            dl.extra["wrapper_class"] = wrapper
        return dl

    @classmethod
    def _parse(cls, record: ConsumedRecord) -> DeadLetter:
        hs = record.headers
        if _raw(hs, h.DLQ_EXCEPTION_CLASS) is not None or _raw(hs, h.DLQ_ORIGINAL_TOPIC):
            return cls(
                record,
                "kops",
                original_topic=_text(hs, h.DLQ_ORIGINAL_TOPIC),
                original_partition=_number(hs, h.DLQ_ORIGINAL_PARTITION),
                original_offset=_number(hs, h.DLQ_ORIGINAL_OFFSET),
                original_timestamp_ms=_number(hs, h.DLQ_ORIGINAL_TIMESTAMP),
                group=_text(hs, h.DLQ_GROUP),
                exception_class=_text(hs, h.DLQ_EXCEPTION_CLASS),
                exception_message=_text(hs, h.DLQ_EXCEPTION_MESSAGE),
                stacktrace=_text(hs, h.DLQ_EXCEPTION_STACKTRACE),
                attempts=_number(hs, h.DLQ_ATTEMPTS),
                first_failure_ms=_number(hs, h.DLQ_FIRST_FAILURE_MS),
                failed_at_ms=_number(hs, h.DLQ_FAILED_AT_MS),
                reason=_text(hs, h.DLQ_REASON),
            )
        if any(k.startswith("kafka_dlt-") for k, _ in hs):
            extra = {
                "cause_class": _text(hs, "kafka_dlt-exception-cause-fqcn"),
                "timestamp_type": _text(hs, "kafka_dlt-original-timestamp-type"),
                "key_exception_class": _text(hs, "kafka_dlt-key-exception-fqcn"),
            }
            return cls(
                record,
                "spring",
                original_topic=_text(hs, "kafka_dlt-original-topic"),
                original_partition=_number(hs, "kafka_dlt-original-partition", binary=True),
                original_offset=_number(hs, "kafka_dlt-original-offset", binary=True),
                original_timestamp_ms=_number(hs, "kafka_dlt-original-timestamp", binary=True),
                group=_text(hs, "kafka_dlt-original-consumer-group"),
                exception_class=_text(hs, "kafka_dlt-exception-fqcn")
                or _text(hs, "kafka_dlt-key-exception-fqcn"),
                exception_message=_text(hs, "kafka_dlt-exception-message")
                or _text(hs, "kafka_dlt-key-exception-message"),
                stacktrace=_text(hs, "kafka_dlt-exception-stacktrace")
                or _text(hs, "kafka_dlt-key-exception-stacktrace"),
                attempts=_number(hs, "retry_topic-attempts", binary=True),
                first_failure_ms=_number(hs, "retry_topic-original-timestamp", binary=True),
                extra={k: v for k, v in extra.items() if v is not None},
            )
        if any(k.startswith("__connect.errors.") for k, _ in hs):
            p = "__connect.errors."
            connector = _text(hs, p + "connector.name")
            extra = {
                "connector": connector,
                "task": _text(hs, p + "task.id"),
                "stage": _text(hs, p + "stage"),
                "class": _text(hs, p + "class.name"),
            }
            return cls(
                record,
                "connect",
                original_topic=_text(hs, p + "topic"),
                original_partition=_number(hs, p + "partition"),
                original_offset=_number(hs, p + "offset"),
                # A sink connector consumes in group "connect-<name>" unless overridden.
                group=f"connect-{connector}" if connector else None,
                exception_class=_text(hs, p + "exception.class.name"),
                exception_message=_text(hs, p + "exception.message"),
                stacktrace=_text(hs, p + "exception.stacktrace"),
                extra={k: v for k, v in extra.items() if v is not None},
            )
        return cls(record, "unknown")

    def matches_exception(self, name: str) -> bool:
        """``name`` (any case) is the class's qualified name, its simple name
        (``ValueError``, Java's ``Outer$Inner`` -> ``Inner``) or a dotted tail of it
        (``errors.DataException``). The real cause is matched, and a wrapper it came in."""
        wanted = (display_class(name) or "").lower()
        if not wanted:
            return False
        for candidate in (self.exception_class, self.extra.get("wrapper_class")):
            if not candidate:
                continue
            full = candidate.lower()
            if full == wanted or full.endswith(("." + wanted, "$" + wanted)):
                return True
        return False

    @property
    def origin(self) -> str | None:
        """``topic/partition@offset`` the record was first consumed from (``?`` for an
        unknown part), or None when the dead letter does not say."""
        if self.original_topic is None and self.original_offset is None:
            return None
        part = "?" if self.original_partition is None else self.original_partition
        off = "?" if self.original_offset is None else self.original_offset
        return f"{self.original_topic or '?'}/{part}@{off}"

    def to_dict(self, *, preview: int = 1024) -> dict[str, Any]:
        r = self.record
        key, key_enc = decode_bytes(r.key)
        value, value_enc = decode_bytes(r.value)
        truncated = value is not None and len(value) > preview
        return {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "format": self.format,
            "key": key,
            "key_encoding": key_enc,
            "value": value[:preview] if truncated and value else value,
            "value_encoding": value_enc,
            "value_truncated": truncated,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_timestamp": self.original_timestamp_ms,
            "origin": self.origin,
            "group": self.group,
            "exception_class": self.exception_class,
            "exception_message": self.exception_message,
            "stacktrace": _clip(self.stacktrace, 4096) if self.stacktrace else None,
            "attempts": self.attempts,
            "first_failure": self.first_failure_ms,
            "failed_at": self.failed_ms,
            "reason": self.reason,
            "extra": self.extra,
        }


def read_dead_letters(
    settings: ClientSettings, topic: str, *, config: dict[str, Any] | None = None
) -> Iterator[DeadLetter]:
    """Every record of ``topic`` (start to the current end) as a :class:`DeadLetter`.
    ``config``: extra consumer properties (``isolation.level``)."""
    for record in consume(
        settings, topic, start=StartAt.beginning(), stop_at_end=True,
        config={**SCAN_CONFIG, **(config or {})},
    ):  # fmt: skip
        yield DeadLetter.from_record(record)
