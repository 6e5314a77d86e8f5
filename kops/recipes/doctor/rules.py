"""The doctor's rules: pure functions from facts (and a client config) to findings.

Each ``check_*`` returns the :class:`~kops.recipes.doctor.facts.Finding` list of one rule (or
one subject); :func:`check` runs them all. The rule ids and what they mean are in
:mod:`kops.recipes.doctor`.
"""

from __future__ import annotations

from collections.abc import Mapping

from kops.admin import is_internal_topic
from kops.recipes.delay.tiers import DEFAULT_TEMPLATE, format_tier
from kops.recipes.dlq.records import looks_like_dlq
from kops.recipes.doctor.facts import (
    DEFAULT_DLQ_REPLAY_WINDOW,
    ERROR,
    OFFSETS_TOPIC,
    RULES,
    WANTED_RF,
    WARNING,
    ClusterFacts,
    DoctorOptions,
    Finding,
    TopicFacts,
    as_bool,
    as_int,
    client_roles,
    duration_text,
    get_setting,
    tier_delay,
)

# --------------------------------------------------------------------------- client rules


def _java(library: str) -> bool:
    return library.lower() == "java"


def check_producer(config: Mapping[str, str], library: str = "librdkafka") -> list[Finding]:
    out: list[Finding] = []
    java = _java(library)
    acks = get_setting(config, "acks", "request.required.acks")
    acks_all = acks is None or acks.lower() in ("all", "-1")  # both clients default to all
    if not acks_all:
        out.append(
            Finding(
                "producer-acks",
                ERROR,
                f"acks={acks}",
                f"acks={acks}: a record counts as sent once "
                + ("it leaves the client" if acks == "0" else "the leader alone has it")
                + "; if the leader fails before followers copy it, it is lost",
                "set acks=all (with min.insync.replicas>=2 on the topic)",
            )
        )
    retries = as_int(get_setting(config, "retries", "message.send.max.retries"))
    retrying = retries is None or retries > 0  # both default to 2147483647
    in_flight_raw = as_int(
        get_setting(config, "max.in.flight.requests.per.connection", "max.in.flight")
    )
    in_flight = in_flight_raw if in_flight_raw is not None else (5 if java else 1_000_000)
    explicit_idem = as_bool(get_setting(config, "enable.idempotence"))
    if explicit_idem is not None:
        idempotent = explicit_idem
        why_off = "enable.idempotence=false"
    elif java:
        # Java 3.0+ turns idempotence on by default, but silently off when a setting
        # conflicts with it (acks, in-flight, retries).
        idempotent = acks_all and in_flight <= 5 and retrying
        why_off = "the Java client turns its default idempotence off for these settings"
    else:
        idempotent = False
        why_off = "enable.idempotence is unset (librdkafka's default is false)"
    if not idempotent:
        out.append(
            Finding(
                "producer-idempotence",
                ERROR,
                "enable.idempotence",
                f"{why_off}: a batch retried after a lost acknowledgement is written twice",
                "set enable.idempotence=true (needs acks=all, retries>0, "
                "max.in.flight.requests.per.connection<=5)",
            )
        )
    if in_flight > 5 and retrying:
        if idempotent and in_flight_raw is not None:
            out.append(
                Finding(
                    "producer-in-flight",
                    ERROR,
                    f"max.in.flight.requests.per.connection={in_flight}",
                    "enable.idempotence=true allows at most 5 requests in flight: the client "
                    "refuses this config and does not start",
                    "set max.in.flight.requests.per.connection=5 (or remove it)",
                )
            )
        elif not idempotent:  # (idempotent with the default: librdkafka caps it at 5)
            shown = in_flight if in_flight_raw is not None else f"{in_flight} (the default)"
            out.append(
                Finding(
                    "producer-in-flight",
                    WARNING,
                    f"max.in.flight.requests.per.connection={shown}",
                    f"{in_flight} requests in flight with retries: a retried batch can land "
                    "after the batches sent behind it, reordering a partition",
                    "set enable.idempotence=true (keeps order with up to 5 in flight), or "
                    "max.in.flight.requests.per.connection=1",
                )
            )
    if retries == 0:
        out.append(
            Finding(
                "producer-retries",
                WARNING,
                "retries=0",
                "retries=0: a leader change or a timeout fails the records at once; they are "
                "lost unless the application re-sends them from its delivery callback",
                "remove retries (default 2147483647) and bound sending with delivery.timeout.ms",
            )
        )
    return out


def check_consumer(config: Mapping[str, str], library: str = "librdkafka") -> list[Finding]:
    auto_commit = as_bool(get_setting(config, "enable.auto.commit"))
    if auto_commit is False:
        return []
    shown = "enable.auto.commit=true" + ("" if auto_commit else " (the default)")
    if _java(library):
        return [
            Finding(
                "consumer-auto-commit",
                WARNING,
                shown,
                "auto commit commits what poll() returned on the next poll(): at-least-once "
                "only if every record is processed before polling again; handing records to "
                "other threads loses them on a crash",
                "set enable.auto.commit=false and commitSync() after processing",
            )
        ]
    if as_bool(get_setting(config, "enable.auto.offset.store")) is False:
        return []  # auto commit of offsets the application stores after processing: fine
    return [
        Finding(
            "consumer-auto-commit",
            ERROR,
            shown,
            "librdkafka commits offsets in the background as records are handed to the "
            "application (enable.auto.offset.store=true): a crash mid-processing skips records "
            "already committed but never processed",
            "set enable.auto.offset.store=false and store_offsets() after processing each "
            "record (or enable.auto.commit=false and commit() after processing)",
        )
    ]


def check_client(config: Mapping[str, str], library: str = "librdkafka") -> list[Finding]:
    """Producer and/or consumer rules, as :func:`client_roles` says the config is for."""
    roles = client_roles(config)
    out: list[Finding] = []
    if "producer" in roles:
        out += check_producer(config, library)
    if "consumer" in roles:
        out += check_consumer(config, library)
    return out


# --------------------------------------------------------------------------- cluster rules


def _set_topic(topic: str, key: str, value: str) -> str:
    return (
        f"set {key}={value} on {topic} "
        f"(`kops topic config {topic} --set {key}={value}`, or kafka-configs.sh --alter "
        f"--entity-type topics --entity-name {topic} --add-config {key}={value})"
    )


def _reassign(subject: str, rf: int) -> str:
    return (
        f"add replicas to every partition of {subject} up to {rf} with a partition "
        "reassignment (kafka-reassign-partitions.sh): Kafka cannot change a replication "
        "factor through a config"
    )


def check_replication(t: TopicFacts, brokers: int) -> list[Finding]:
    rf = t.replication_factor
    if rf >= WANTED_RF:
        return []
    possible = min(WANTED_RF, brokers)
    if rf >= possible:
        return [
            Finding(
                "replication-factor",
                WARNING,
                t.name,
                f"replication factor {rf}: the cluster has {brokers} broker"
                f"{'s' * (brokers != 1)}, so RF {rf} is all it can have, and losing "
                f"{'the broker' if brokers == 1 else 'brokers'} can lose the topic",
                f"run at least {WANTED_RF} brokers, then " + _reassign(t.name, WANTED_RF),
            )
        ]
    return [
        Finding(
            "replication-factor",
            ERROR,
            t.name,
            f"replication factor {rf} on a cluster of {brokers} brokers: one broker loss "
            + ("loses the partitions it leads" if rf == 1 else "leaves a single copy"),
            _reassign(t.name, possible),
        )
    ]


def check_min_insync(t: TopicFacts) -> list[Finding]:
    rf = t.replication_factor
    min_isr = as_int(t.configs.get("min.insync.replicas"))
    if min_isr is None or rf < 1:
        return []
    if rf >= WANTED_RF and min_isr < 2:
        return [
            Finding(
                "min-insync-replicas",
                ERROR,
                t.name,
                f"min.insync.replicas={min_isr} with replication factor {rf}: an acks=all "
                "write is acknowledged by the leader alone and lost if it fails next",
                _set_topic(t.name, "min.insync.replicas", "2"),
            )
        ]
    if min_isr > rf:
        what = "every acks=all write fails with NOT_ENOUGH_REPLICAS, even with all brokers up"
        fix = _set_topic(t.name, "min.insync.replicas", str(max(1, min(rf - 1, 2))))
    elif min_isr == rf and rf > 1:
        # (RF 1 with min.insync.replicas=1 is the only choice; the replication rule says so)
        what = "one broker down stops acks=all writes (NOT_ENOUGH_REPLICAS) until it is back"
        fix = _set_topic(t.name, "min.insync.replicas", str(rf - 1))
        if rf == 2:
            fix = "raise the replication factor to 3 and keep min.insync.replicas=2; or " + fix
    else:
        return []
    return [
        Finding(
            "min-insync-replicas",
            WARNING,
            t.name,
            f"min.insync.replicas={min_isr} with replication factor {rf}: {what}",
            fix,
        )
    ]


def check_unclean_topic(t: TopicFacts, broker_unclean: bool) -> list[Finding]:
    if as_bool(t.configs.get("unclean.leader.election.enable")) is not True:
        return []
    if broker_unclean and "unclean.leader.election.enable" not in t.overrides:
        return []  # inherited: the broker finding says it once
    return [
        Finding(
            "unclean-leader-election",
            ERROR,
            t.name,
            "unclean.leader.election.enable=true: a replica that missed writes can become "
            "leader, dropping records the old leader acknowledged",
            _set_topic(t.name, "unclean.leader.election.enable", "false"),
        )
    ]


def check_broker(broker: int, configs: Mapping[str, str], brokers: int) -> list[Finding]:
    out = []
    if as_bool(configs.get("unclean.leader.election.enable")) is True:
        out.append(
            Finding(
                "unclean-leader-election",
                ERROR,
                f"broker {broker}",
                "unclean.leader.election.enable=true on the broker: every topic without its "
                "own setting lets an out-of-sync replica become leader and drop acknowledged "
                "records",
                "set unclean.leader.election.enable=false in the broker config "
                f"(kafka-configs.sh --alter --entity-type brokers --entity-name {broker} "
                "--add-config unclean.leader.election.enable=false)",
            )
        )
    default_rf = as_int(configs.get("default.replication.factor"))
    if default_rf is not None and default_rf < min(WANTED_RF, brokers):
        out.append(
            Finding(
                "default-replication-factor",
                WARNING,
                f"broker {broker}",
                f"default.replication.factor={default_rf} on a cluster of {brokers} brokers: "
                "topics created without a replication factor (auto-created ones too) get "
                f"{default_rf} replica{'s' * (default_rf != 1)}",
                f"set default.replication.factor={min(WANTED_RF, brokers)} in the broker config",
            )
        )
    return out


def check_delay_tier(t: TopicFacts, template: str = DEFAULT_TEMPLATE) -> list[Finding]:
    delay = tier_delay(t.name, template)
    retention = as_int(t.configs.get("retention.ms"))
    if delay is None or retention is None or retention < 0 or retention >= delay * 1000:
        return []
    keep = max(7 * 86400_000, int(4 * delay * 1000))  # what ensure_tier_topics gives a tier
    return [
        Finding(
            "delay-tier-retention",
            ERROR,
            t.name,
            f"delay tier {format_tier(delay)} keeps records for retention.ms={retention} "
            f"({duration_text(retention)}): they can be deleted before they are due",
            _set_topic(t.name, "retention.ms", str(keep)),
        )
    ]


def check_dlq(t: TopicFacts, replay_window: float = DEFAULT_DLQ_REPLAY_WINDOW) -> list[Finding]:
    if not looks_like_dlq(t.name):
        return []
    retention = as_int(t.configs.get("retention.ms"))
    window_ms = int(replay_window * 1000)
    if retention is None or retention < 0 or retention >= window_ms:
        return []
    return [
        Finding(
            "dlq-retention",
            ERROR,
            t.name,
            f"dead letters are kept retention.ms={retention} ({duration_text(retention)}), less "
            f"than the replay window of {duration_text(window_ms)}: they are deleted before "
            "anyone replays them",
            _set_topic(t.name, "retention.ms", str(window_ms)),
        )
    ]


def check_offsets_topic(facts: ClusterFacts) -> list[Finding]:
    wanted = min(WANTED_RF, facts.brokers)
    offsets = facts.topic(OFFSETS_TOPIC)
    if offsets is not None:
        rf = offsets.replication_factor
        if rf >= wanted:
            return []
        return [
            Finding(
                "offsets-replication-factor",
                ERROR,
                OFFSETS_TOPIC,
                f"{OFFSETS_TOPIC} has replication factor {rf} on a cluster of {facts.brokers} "
                "brokers: losing a broker loses committed offsets, and groups restart from "
                "auto.offset.reset (re-reading or skipping records)",
                _reassign(OFFSETS_TOPIC, wanted)
                + f"; set offsets.topic.replication.factor={wanted} for new clusters",
            )
        ]
    out = []
    for broker, configs in sorted(facts.broker_configs.items()):
        setting = as_int(configs.get("offsets.topic.replication.factor"))
        if setting is not None and setting < wanted:
            out.append(
                Finding(
                    "offsets-replication-factor",
                    ERROR,
                    f"broker {broker}",
                    f"offsets.topic.replication.factor={setting}: {OFFSETS_TOPIC} will be "
                    f"created with {setting} replica{'s' * (setting != 1)} on a cluster of "
                    f"{facts.brokers} brokers",
                    f"set offsets.topic.replication.factor={wanted} in the broker config before "
                    "the first consumer group commits",
                )
            )
    return out


def check_sweep(t: TopicFacts, recommended: int) -> list[Finding]:
    if t.partitions >= recommended:
        return []
    return [
        Finding(
            "sweep-partitions",
            WARNING,
            t.name,
            f"{t.partitions} partition{'s' * (t.partitions != 1)}, fewer than the "
            f"{recommended} `kops bench sweep` recommended for the target throughput",
            f"grow it: `kops topic alter {t.name} --partitions {recommended}` (kafka-topics.sh "
            f"--alter --topic {t.name} --partitions {recommended}); keys map to new "
            "partitions afterwards, so per-key order breaks across the change",
        )
    ]


def checked_topics(facts: ClusterFacts, options: DoctorOptions) -> list[TopicFacts]:
    if options.topics is not None:
        wanted = set(options.topics)
        return [t for t in facts.topics if t.name in wanted]
    return [t for t in facts.topics if not is_internal_topic(t.name)]


def check_cluster(facts: ClusterFacts, options: DoctorOptions | None = None) -> list[Finding]:
    """Every broker and topic rule over gathered (or hand-made) facts."""
    options = options or DoctorOptions()
    out: list[Finding] = []
    for broker, configs in sorted(facts.broker_configs.items()):
        out += check_broker(broker, configs, facts.brokers)
    broker_unclean = any(
        as_bool(c.get("unclean.leader.election.enable")) for c in facts.broker_configs.values()
    )
    out += check_offsets_topic(facts)
    for t in checked_topics(facts, options):
        out += check_replication(t, facts.brokers)
        out += check_min_insync(t)
        out += check_unclean_topic(t, broker_unclean)
        out += check_delay_tier(t, options.delay_template)
        out += check_dlq(t, options.dlq_replay_window)
        if options.sweep_partitions is not None:
            out += check_sweep(t, options.sweep_partitions)
    return out


def check(
    facts: ClusterFacts,
    client_config: Mapping[str, str] | None = None,
    options: DoctorOptions | None = None,
) -> list[Finding]:
    """Every rule (minus ``options.ignore``), errors first."""
    options = options or DoctorOptions()
    out = check_client(client_config or {}, options.client_library)
    out += check_cluster(facts, options)
    kept = [f for f in out if f.rule not in options.ignore]
    return sorted(kept, key=lambda f: (f.severity != ERROR, RULES.index(f.rule), f.subject))
