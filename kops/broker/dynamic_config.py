"""Dynamic broker configs: what `kafka-configs --entity-type brokers --alter` may change.

Kafka lets a running broker take new values for some of its settings (the
"per-broker" and "cluster-wide" update modes of its broker config table) and
keeps them beside the static ones: per broker (resource name = the broker id)
and as a cluster-wide default (resource name ""), the per-broker value winning.
kops keeps both in ``dynamic-broker-configs.json`` in the data directory
(replaced atomically), layers them over the static settings in BrokerConfig,
and re-derives every topic's defaults from the result, so a new
``log.retention.ms`` reaches the topics that do not override it at once.

Which keys are dynamic follows Kafka's DynamicBrokerConfig: the log settings
that are topic defaults, the cleaner's, the thread pools', the connection
limits, and the listener security settings (also as ``listener.name.X.KEY``).
Anything else is read-only: INVALID_REQUEST, as from Kafka. Settings kops does
not act on (threads, SSL, SASL) are stored and described, like Kafka's on a
broker that does not use them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from kio.schema.errors import ErrorCode

from kops.broker.config import BROKER_DEFAULTS
from kops.broker.log.checkpoint import write_atomic
from kops.errors import ApiError

__all__ = ["DYNAMIC_CONFIGS", "DynamicConfigError", "DynamicConfigStore", "is_dynamic"]

_LOG = (
    "log.segment.bytes log.roll.ms log.roll.hours log.roll.jitter.ms log.roll.jitter.hours "
    "log.index.size.max.bytes log.flush.interval.messages log.flush.interval.ms "
    "log.retention.bytes log.retention.ms log.retention.minutes log.retention.hours "
    "log.index.interval.bytes log.cleaner.delete.retention.ms log.cleaner.min.compaction.lag.ms "
    "log.cleaner.max.compaction.lag.ms log.segment.delete.delay.ms "
    "log.cleaner.min.cleanable.ratio log.cleanup.policy unclean.leader.election.enable "
    "min.insync.replicas compression.type compression.gzip.level compression.lz4.level "
    "compression.zstd.level log.preallocate log.message.timestamp.type "
    "log.message.timestamp.difference.max.ms log.message.timestamp.before.max.ms "
    "log.message.timestamp.after.max.ms log.message.downconversion.enable message.max.bytes "
    "log.local.retention.ms log.local.retention.bytes"
)
_CLEANER_AND_THREADS = (
    "log.cleaner.threads log.cleaner.dedupe.buffer.size log.cleaner.io.buffer.size "
    "log.cleaner.io.buffer.load.factor log.cleaner.io.max.bytes.per.second log.cleaner.backoff.ms "
    "num.io.threads num.network.threads num.replica.fetchers num.recovery.threads.per.data.dir "
    "background.threads"
)
_CONNECTIONS_AND_MORE = (
    "max.connections max.connections.per.ip max.connections.per.ip.overrides "
    "max.connection.creation.rate metric.reporters producer.id.expiration.ms "
    "follower.replication.throttled.rate leader.replication.throttled.rate "
    "replica.alter.log.dirs.io.max.bytes.per.second transaction.partition.verification.enable"
)
# Listener security settings: dynamic as they are and per listener.
_SECURITY = (
    "ssl.keystore.type ssl.keystore.location ssl.keystore.password ssl.key.password "
    "ssl.keystore.key ssl.keystore.certificate.chain ssl.truststore.type "
    "ssl.truststore.location ssl.truststore.password ssl.truststore.certificates "
    "ssl.protocol ssl.enabled.protocols ssl.cipher.suites ssl.client.auth "
    "ssl.endpoint.identification.algorithm ssl.secure.random.implementation "
    "ssl.keymanager.algorithm ssl.trustmanager.algorithm ssl.engine.factory.class "
    "sasl.enabled.mechanisms sasl.jaas.config sasl.kerberos.service.name "
    "sasl.kerberos.kinit.cmd sasl.kerberos.ticket.renew.window.factor "
    "sasl.kerberos.ticket.renew.jitter sasl.kerberos.min.time.before.relogin "
    "sasl.kerberos.principal.to.local.rules sasl.login.refresh.window.factor "
    "sasl.login.refresh.window.jitter sasl.login.refresh.min.period.seconds "
    "sasl.login.refresh.buffer.seconds"
)
_SECURITY_CONFIGS = frozenset(_SECURITY.split())
DYNAMIC_CONFIGS = (
    frozenset((_LOG + " " + _CLEANER_AND_THREADS + " " + _CONNECTIONS_AND_MORE).split())
    | _SECURITY_CONFIGS
)
_LISTENER_PREFIXED = re.compile(r"^listener\.name\.[a-z0-9_-]+\.(?:[a-z0-9_-]+\.)?(.+)$")


def is_dynamic(key: str) -> bool:
    if key in DYNAMIC_CONFIGS:
        return True
    match = _LISTENER_PREFIXED.match(key)
    # listener.name.L.KEY, or listener.name.L.MECHANISM.KEY for SASL settings.
    return match is not None and (
        match.group(1) in _SECURITY_CONFIGS or key.split(".", 3)[-1] in _SECURITY_CONFIGS
    )


class DynamicConfigError(ApiError):
    """A dynamic config change refused, with the code Kafka answers it with."""


def _check_value(key: str, value: str) -> None:
    default = BROKER_DEFAULTS.get(key)
    if default is None:
        return
    try:
        if re.fullmatch(r"-?\d+", default):
            int(value)
        elif re.fullmatch(r"-?\d+\.\d+", default):
            float(value)
        elif default in ("true", "false") and value.strip().lower() not in ("true", "false"):
            raise ValueError(value)
    except ValueError:
        raise DynamicConfigError(
            f"Invalid value {value} for configuration {key}", error_code=ErrorCode.invalid_config
        ) from None


class DynamicConfigStore:
    """The dynamic broker configs of one broker: {"" (cluster default) | id: {key: value}}."""

    def __init__(self, path: Path, broker_id: int) -> None:
        self.path = path
        self.broker_id = broker_id
        self._configs: dict[str, dict[str, str]] = {}
        if path.exists():
            raw = json.loads(path.read_text())
            self._configs = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in raw.items()}

    @property
    def cluster_default(self) -> dict[str, str]:
        return dict(self._configs.get("", {}))

    @property
    def per_broker(self) -> dict[str, str]:
        return dict(self._configs.get(str(self.broker_id), {}))

    def resource(self, name: str) -> dict[str, str]:
        self._check_resource(name)
        return dict(self._configs.get(name, {}))

    def alter(
        self,
        name: str,
        changes: Iterable[tuple[str, str | None]],
        *,
        replace: bool = False,
        validate_only: bool = False,
    ) -> dict[str, str]:
        """Apply (key, value) changes to resource `name` (None: delete); returns the new set.

        ``replace`` (legacy AlterConfigs): the changes are the whole new set.
        """
        self._check_resource(name)
        current = {} if replace else dict(self._configs.get(name, {}))
        not_dynamic = []
        for key, value in changes:
            if not is_dynamic(key):
                not_dynamic.append(key)
                continue
            if value is None:
                current.pop(key, None)
            else:
                _check_value(key, value)
                current[key] = value
        if not_dynamic:
            raise DynamicConfigError(
                "Cannot update these configs dynamically: " + ", ".join(sorted(not_dynamic)),
                error_code=ErrorCode.invalid_request,
            )
        if not validate_only:
            self.replace(name, current)
        return current

    def replace(self, name: str, configs: Mapping[str, str]) -> None:
        """Store `configs` as resource `name`'s whole set (already validated)."""
        self._check_resource(name)
        if configs:
            self._configs[name] = dict(configs)
        else:
            self._configs.pop(name, None)
        write_atomic(self.path, json.dumps(self._configs, sort_keys=True).encode())

    def _check_resource(self, name: str) -> None:
        if name not in ("", str(self.broker_id)):
            raise DynamicConfigError(
                f"Unexpected broker id, expected {self.broker_id} or empty string, but received "
                f"{name}",
                error_code=ErrorCode.invalid_request,
            )
