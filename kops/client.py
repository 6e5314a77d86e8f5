"""Small shared helpers over confluent-kafka: client config, an admin session, error translation.

Everything here works against any Kafka-compatible cluster (the bundled kops broker or a real
Kafka). Nothing here imports click: the CLI in ``kops.cli`` and the recipes both build on it.

Errors raised to callers form one small tree::

    KopsClientError            a Kafka operation failed; str(e) is one line for people
    +-- BrokerUnavailable      no broker answered (refused, unresolvable, timed out)
    +-- TopicAlreadyExists
    +-- UnknownTopic
    +-- RecordTooLarge         the client or the broker refused a record as too large

Typical use::

    from kops.client import ClientSettings, AdminSession
    settings = ClientSettings("127.0.0.1:9092")
    with AdminSession(settings) as admin:
        futures = admin.client.create_topics([...])
        admin.wait_all(futures, "create topic")
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kops.errors import KopsError

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_TIMEOUT",
    "AdminSession",
    "BrokerUnavailable",
    "ClientSettings",
    "ErrorWatch",
    "KopsClientError",
    "RecordTooLarge",
    "TopicAlreadyExists",
    "UnknownTopic",
    "fetch_metadata",
    "record_too_large",
    "translate_error",
]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
#: Seconds a single admin/metadata operation may take before we give up.
DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")

# librdkafka logs every failed connection attempt; the CLI reports one clean line instead.
_QUIET_LOGGER = logging.getLogger("kops.librdkafka")
log = logging.getLogger("kops.client")
_QUIET_LOGGER.addHandler(logging.NullHandler())
_QUIET_LOGGER.propagate = False

# Error codes that mean "we cannot talk to the cluster at all".
_UNREACHABLE_CODES = frozenset(
    {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TRANSPORT}
)


class KopsClientError(KopsError):
    """A Kafka operation failed. ``str(e)`` is a single line suitable for an operator.

    ``code`` is the librdkafka/Kafka error name (e.g. ``"TOPIC_ALREADY_EXISTS"``) when known.
    """

    def __init__(self, message: str, *, code: str | None = None, retriable: bool = False):
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class BrokerUnavailable(KopsClientError):
    """No broker answered: connection refused, host unresolvable, or no response in time."""


class TopicAlreadyExists(KopsClientError):
    """CreateTopics was refused because the topic exists."""


class UnknownTopic(KopsClientError):
    """The topic (or partition) does not exist on the cluster."""


class RecordTooLarge(KopsClientError):
    """A record (or batch) was too large: for the client (librdkafka's ``message.max.bytes``,
    refused by ``produce()`` before it is sent) or for the broker (the topic's
    ``max.message.bytes``, refused in the delivery report)."""


#: librdkafka's default ``message.max.bytes``: the largest record a client sends.
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000


@dataclass(frozen=True)
class ClientSettings:
    """Where and how to connect.

    ``config`` holds extra librdkafka properties (e.g. ``security.protocol``, ``sasl.*``) and
    wins over the defaults chosen here. ``timeout`` bounds each admin or metadata operation.
    """

    bootstrap: str = DEFAULT_BOOTSTRAP
    config: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def of(cls, target: ClientSettings | str) -> ClientSettings:
        """Accept either settings or a bare bootstrap string."""
        return target if isinstance(target, ClientSettings) else cls(bootstrap=target)

    def base_config(self, watch: ErrorWatch | None = None) -> dict[str, Any]:
        """Config shared by every client: short connect timeouts, quiet logging."""
        connect_ms = int(min(self.timeout, 5.0) * 1000)
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "socket.connection.setup.timeout.ms": max(connect_ms, 1000),
            "reconnect.backoff.ms": 200,
            "reconnect.backoff.max.ms": 2000,
            # Never let a metadata lookup create a topic on brokers with
            # auto.create.topics.enable=true (Kafka's default).
            "allow.auto.create.topics": False,
            "logger": _QUIET_LOGGER,
        }
        if watch is not None:
            conf["error_cb"] = watch
        conf.update(self.config)
        return conf

    def admin_config(self, watch: ErrorWatch | None = None) -> dict[str, Any]:
        return self.base_config(watch)

    @property
    def plaintext(self) -> bool:
        """No TLS or SASL: kops may send its own raw requests (what librdkafka lacks)."""
        return str(self.config.get("security.protocol", "plaintext")).lower() == "plaintext"

    def producer_config(self, watch: ErrorWatch | None = None, **extra: Any) -> dict[str, Any]:
        """Producer defaults: acks=all, never auto-create topics, 30 s delivery timeout."""
        conf: dict[str, Any] = {
            "acks": "all",
            "linger.ms": 5,
            "delivery.timeout.ms": 30000,
        }
        conf.update(self.base_config(watch))
        conf.update(extra)
        return conf

    def consumer_config(
        self, group_id: str, watch: ErrorWatch | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Consumer defaults: no auto-commit, no topic auto-creation."""
        conf: dict[str, Any] = {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
        conf.update(self.base_config(watch))
        conf.update(extra)
        return conf


class ErrorWatch:
    """An ``error_cb`` that remembers what librdkafka reported.

    librdkafka only calls it from ``poll()``; :meth:`check` raises :class:`BrokerUnavailable`
    once every broker is down, so callers fail in well under a second instead of waiting for a
    request timeout.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        log: logging.Logger | None = None,
        what: str = "client",
        log_every: float = 30.0,
        notify: Callable[[str], None] | None = None,
    ):
        self.bootstrap = bootstrap
        self.last_error: KafkaError | None = None
        self.all_down = False
        self._lock = threading.Lock()
        # Long-running clients (forwarders, workers, followers) pass `log` (or `notify`, a
        # function of one line): an unreachable cluster is then a warning at once and every
        # `log_every` seconds while it lasts, never silence.
        self.log = log
        self.notify = notify
        self.what = what
        self.log_every = log_every
        self._logged_at = -1e9

    def __call__(self, err: KafkaError) -> None:
        if (self.log is not None or self.notify is not None) and err.code() in _UNREACHABLE_CODES:
            now = time.monotonic()
            if now - self._logged_at >= self.log_every:
                self._logged_at = now
                text = (
                    f"{self.what}: cannot reach Kafka at {self.bootstrap}: {err.str()} (retrying)"
                )
                if self.log is not None:
                    self.log.warning("%s", text)
                if self.notify is not None:
                    self.notify(text)
        with self._lock:
            code = err.code()
            # Keep the specific cause ("Connection refused", "Failed to resolve") over the
            # generic "1/1 brokers are down" that follows it.
            if code in _UNREACHABLE_CODES and (
                code != KafkaError._ALL_BROKERS_DOWN or self.last_error is None
            ):
                self.last_error = err
            if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
                self.all_down = True

    def unavailable(self, reason: str | None = None) -> BrokerUnavailable:
        detail = reason
        if detail is None:
            err = self.last_error
            if err is None or err.code() == KafkaError._ALL_BROKERS_DOWN:
                detail = "no broker could be reached"
            else:
                detail = err.str()
        return BrokerUnavailable(
            f"cannot reach Kafka at {self.bootstrap}: {detail}", code="_ALL_BROKERS_DOWN"
        )

    def check(self) -> None:
        if self.all_down:
            raise self.unavailable()


def translate_error(exc: BaseException, what: str = "", subject: str | None = None) -> Exception:
    """Turn a confluent-kafka exception into a :class:`KopsClientError` with a clear message.

    ``what`` names the operation ("create topic"), ``subject`` the thing it acted on (a topic
    name). Exceptions that are not Kafka errors are returned unchanged.
    """
    err: KafkaError | None = None
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err = exc.args[0]
    elif isinstance(exc, KafkaError):
        err = exc
    if err is None:
        if isinstance(exc, TimeoutError):
            return KopsClientError(
                f"{what or 'request'} timed out" + (f" for {subject!r}" if subject else ""),
                code="_TIMED_OUT",
                retriable=True,
            )
        return exc if isinstance(exc, Exception) else Exception(str(exc))

    code = err.code()
    name = err.name()
    prefix = f"{what}: " if what else ""
    if code == KafkaError.TOPIC_ALREADY_EXISTS:
        return TopicAlreadyExists(f"topic {subject!r} already exists", code=name)
    if code in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_ID,
    ):
        target = f"topic {subject!r}" if subject else "topic"
        return UnknownTopic(f"unknown {target}", code=name)
    if code in _UNREACHABLE_CODES:
        return BrokerUnavailable(f"{prefix}cannot reach Kafka: {err.str()}", code=name)
    if code == KafkaError._UNSUPPORTED_FEATURE:
        return KopsClientError(f"{prefix}not supported by this broker ({err.str()})", code=name)
    return KopsClientError(
        f"{prefix}{err.str()} ({name})", code=name, retriable=bool(err.retriable())
    )


def record_too_large(
    topic: str,
    *,
    settings: ClientSettings | None = None,
    size: int | None = None,
    topic_limit: str | None = None,
) -> RecordTooLarge:
    """The one-line error for ``MSG_SIZE_TOO_LARGE`` (librdkafka names the broker's
    MESSAGE_TOO_LARGE so, and its own refusal too, both worded "Broker: Message size too
    large"), saying which limit was hit and which setting to change.

    With ``settings`` the client refused the record in ``produce()``: the broker never saw
    it, and the limit is the producer's ``message.max.bytes``. Without, the broker refused
    it in a delivery report: the limit is the topic's ``max.message.bytes`` (``topic_limit``
    when known), which defaults to the broker's ``message.max.bytes``.
    """
    if settings is not None:
        limit = settings.producer_config().get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES)
        what = f"a record of {size} bytes" if size is not None else "a record"
        return RecordTooLarge(
            f"{what} is over the client's limit message.max.bytes={limit} (librdkafka refused "
            "it; the broker never saw it): raise it with -X message.max.bytes=N (the topic's "
            "max.message.bytes must allow it too)",
            code="MSG_SIZE_TOO_LARGE",
        )
    limit_text = f"={topic_limit}" if topic_limit is not None else ""
    return RecordTooLarge(
        f"the broker refused a record batch for {topic!r} as too large (MESSAGE_TOO_LARGE): "
        f"over the topic's max.message.bytes{limit_text} (the broker's message.max.bytes "
        f"unless the topic sets it); raise it with "
        f"`kops topic config {topic} --set max.message.bytes=N`",
        code="MSG_SIZE_TOO_LARGE",
    )


_UNKNOWN_TOPIC_OR_PARTITION = 3


def close_consumer(consumer: Consumer, timeout: float = 10.0, *, subscribed: bool = True) -> None:
    """Leave the group and close: unsubscribe, let poll() run the revocation, then close().

    A consumer subscribed with rebalance callbacks must not have to revoke inside
    close(): there confluent-kafka's callback asks librdkafka for the rebalance
    protocol while holding the GIL and is never answered, which froze whole
    processes (every Python thread, pytest-timeout's included). After the
    revocation has run here, close() has nothing left to revoke. Records polled
    meanwhile are dropped uncommitted: the group's next owner reads them. A consumer
    that assign()ed its partitions (`subscribed=False`) is simply closed.
    """
    if not subscribed:
        consumer.close()
        return
    try:
        consumer.unsubscribe()
        deadline = time.monotonic() + timeout
        while consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
    except (KafkaException, RuntimeError) as exc:
        log.debug("leaving the group before close: %s", exc)
    consumer.close()


def topics_metadata_request(names: Sequence[str]) -> Any:
    """Metadata v8 for `names`, never auto-creating them: the raw request kops sends
    for what confluent-kafka does not expose (leader epochs, one named broker's view)."""
    from kio.schema.metadata import v8 as metadata_v8
    from kio.schema.types import TopicName

    return metadata_v8.MetadataRequest(
        topics=tuple(metadata_v8.request.MetadataRequestTopic(name=TopicName(n)) for n in names),
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    )


class AdminSession:
    """An ``AdminClient`` plus the waiting and error translation every admin call needs.

    Use as a context manager (or just let it be garbage-collected). ``client`` is the raw
    confluent-kafka ``AdminClient`` for calls this class does not wrap.
    """

    def __init__(self, settings: ClientSettings | str):
        self.settings = ClientSettings.of(settings)
        self.watch = ErrorWatch(self.settings.bootstrap)
        self.client = AdminClient(self.settings.admin_config(self.watch))

    def __enter__(self) -> AdminSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # AdminClient has no close(); dropping the reference destroys the handle.
        pass

    @property
    def request_timeout(self) -> float:
        return self.settings.timeout

    def ensure_topics(self, wanted: Sequence[NewTopic]) -> list[str]:
        """Create the topics in `wanted` that do not exist yet; return the names created.

        Another process may create the same topic at the same moment (two workers
        starting together): that counts as success, not an error.
        """
        existing = set(self.metadata().topics)
        missing = [t for t in wanted if t.topic not in existing]
        if not missing:
            return []
        futures = self.client.create_topics(
            missing, request_timeout=self.request_timeout, operation_timeout=self.request_timeout
        )
        created = []
        for name, future in futures.items():
            try:
                self.wait(future, "create topic", name)
                created.append(name)
            except TopicAlreadyExists:
                pass
        self.wait_visible(created)
        return created

    def wait_visible(
        self, names: Sequence[str], timeout: float = 10.0, *, present: bool = True
    ) -> None:
        """Wait until every broker answers Metadata for `names` with a leader per partition
        (`present=False`: until every broker calls them unknown, after a deletion).

        A cluster's controller answers CreateTopics once the topic is committed; each
        broker learns it a moment later, and a client asking a broker that has not yet
        would see an unknown topic. Best effort and bounded: asked with a raw Metadata
        request, so only on plaintext listeners (elsewhere librdkafka's retries cover it).
        """
        if not names or not self.settings.plaintext:
            return
        from kops.protocol.client import RequestError, send_request

        request = topics_metadata_request(names)
        brokers = [(b.host, b.port) for b in self.metadata().brokers.values()]
        if len(brokers) <= 1:
            return
        deadline = time.monotonic() + timeout
        for host, port in brokers:
            while time.monotonic() < deadline:
                try:
                    topics = send_request(host, port, request, timeout=2).topics
                except RequestError:
                    break  # that broker is down: nothing to wait for there
                if all(
                    t.error_code == 0 and all(p.leader_id >= 0 for p in t.partitions)
                    if present
                    else t.error_code == _UNKNOWN_TOPIC_OR_PARTITION
                    for t in topics
                ):
                    break
                time.sleep(0.05)

    def wait(
        self,
        future: Future[T],
        what: str,
        subject: str | None = None,
        timeout: float | None = None,
    ) -> T:
        """Block until ``future`` resolves, failing fast if the cluster is unreachable."""
        deadline = time.monotonic() + (self.settings.timeout if timeout is None else timeout)
        while not future.done():
            self.client.poll(0.05)
            self.watch.check()
            if time.monotonic() > deadline:
                future.cancel()
                if self.watch.last_error is not None:
                    raise self.watch.unavailable()
                raise KopsClientError(
                    f"{what}: no answer from Kafka at {self.settings.bootstrap} within "
                    f"{self.settings.timeout:g}s",
                    code="_TIMED_OUT",
                    retriable=True,
                )
        try:
            return future.result()
        except Exception as exc:
            translated = translate_error(exc, what, subject)
            if translated is exc:
                raise
            if isinstance(translated, BrokerUnavailable) or (
                isinstance(translated, KopsClientError) and translated.code == "_TIMED_OUT"
            ):
                self.client.poll(0)
                self.watch.check()
            raise translated from exc

    def wait_all(self, futures: Mapping[Any, Future[Any]], what: str) -> dict[Any, Any]:
        """Wait for a dict of futures (as returned by most AdminClient calls)."""
        return {
            key: self.wait(fut, what, key if isinstance(key, str) else None)
            for key, fut in futures.items()
        }

    def metadata(self, topic: str | None = None) -> Any:
        """Cluster metadata (``ClusterMetadata``), failing fast when unreachable."""
        return fetch_metadata(self.client, self.watch, self.settings.timeout, topic)


def _serve_callbacks(client: AdminClient | Producer | Consumer) -> None:
    """Serve ``client``'s pending callbacks (its ErrorWatch learns of an unreachable
    cluster) without consuming anything.

    A consumer is polled only while it holds no partitions: its poll() hands out the next
    record, which a caller serving callbacks would drop. That record was skipped for good:
    the consumer's position moved past it, and a recipe committing that position (the
    fan-out does, once nothing is in flight) lost it. An assigned consumer's callbacks are
    served by its own consume loop instead.
    """
    if isinstance(client, Consumer) and client.assignment():
        return
    client.poll(0)


def fetch_metadata(
    client: AdminClient | Producer | Consumer,
    watch: ErrorWatch,
    timeout: float,
    topic: str | None = None,
) -> Any:
    """``list_topics`` in short slices, so an unreachable cluster is reported within ~1 s.

    When ``topic`` is given and does not exist, raises :class:`UnknownTopic`.
    """
    deadline = time.monotonic() + timeout
    last_exc: KafkaException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            md = client.list_topics(topic, timeout=min(0.5, remaining))
        except KafkaException as exc:
            last_exc = exc
            _serve_callbacks(client)
            watch.check()
            continue
        if topic is not None:
            tmd = md.topics.get(topic)
            if tmd is None or (
                tmd.error is not None
                and tmd.error.code()
                in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
            ):
                raise UnknownTopic(f"unknown topic {topic!r}", code="UNKNOWN_TOPIC_OR_PART")
            if tmd.error is not None and tmd.error.code() == KafkaError.LEADER_NOT_AVAILABLE:
                # Freshly created topic: leaders are still being elected.
                time.sleep(0.1)
                continue
            if tmd.error is not None:
                raise translate_error(KafkaException(tmd.error), "metadata", topic)
        return md
    if watch.last_error is not None:
        raise watch.unavailable()
    detail = last_exc.args[0].str() if last_exc is not None else "no response"
    raise BrokerUnavailable(
        f"cannot reach Kafka at {watch.bootstrap}: {detail} (waited {timeout:g}s)",
        code="_TIMED_OUT",
    )


# Kafka holds a new group's first join for group.initial.rebalance.delay.ms (3 s by default)
# and waits up to the rebalance timeout for other members; some engines take far longer
# (tansu 0.6: about 23 s). A consumer still joining is not idle.
JOIN_ALLOWANCE_S = 60.0


class IdleClock:
    """``idle_timeout`` for a group consumer, counted only while it holds partitions.

    Without this, a short idle timeout ends a batch run before its first assignment. The
    clock restarts whenever the consumer goes from no partitions to some. While it holds
    none, it waits up to ``join_allowance`` seconds before counting as idle, so a member
    the group never gives a partition still ends.
    """

    def __init__(self, timeout: float | None, *, join_allowance: float = JOIN_ALLOWANCE_S) -> None:
        self.timeout = timeout
        self.join_allowance = join_allowance
        self._last = time.monotonic()
        self._assigned = False

    def touch(self) -> None:
        """A record arrived."""
        self._last = time.monotonic()

    def left(self, consumer: Consumer) -> float | None:
        """Seconds until idle (<= 0: idle now), or None when there is no timeout."""
        if self.timeout is None:
            return None
        assigned = bool(consumer.assignment())
        if assigned and not self._assigned:
            self._last = time.monotonic()
        self._assigned = assigned
        limit = self.timeout if assigned else max(self.timeout, self.join_allowance)
        return limit - (time.monotonic() - self._last)

    def expired(self, consumer: Consumer) -> bool:
        left = self.left(consumer)
        return left is not None and left <= 0
