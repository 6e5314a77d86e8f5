"""Collect :class:`~kops.recipes.doctor.facts.ClusterFacts` from a live cluster through the
Kafka protocol alone (Metadata and DescribeConfigs), and run every rule over them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType

from kops.client import (
    AdminSession,
    BrokerUnavailable,
    ClientSettings,
    KopsClientError,
    UnknownTopic,
)
from kops.recipes.doctor.facts import (
    OFFSETS_TOPIC,
    ClusterFacts,
    DoctorOptions,
    DoctorReport,
    TopicFacts,
    client_roles,
)
from kops.recipes.doctor.rules import check, checked_topics

# --------------------------------------------------------------------------- gathering


def _entries(entries: Mapping[str, Any]) -> tuple[dict[str, str], frozenset[str]]:
    values: dict[str, str] = {}
    overrides = set()
    for name, entry in entries.items():
        if entry.value is not None:
            values[name] = str(entry.value)
        if entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value:
            overrides.add(name)
    return values, frozenset(overrides)


def gather(target: ClientSettings | str, topics: Iterable[str] | None = None) -> ClusterFacts:
    """Brokers, topics (partitions, replicas, configs) and broker configs, through Metadata
    and DescribeConfigs only. ``topics``: describe those (UnknownTopic when one is missing)
    plus ``__consumer_offsets``; None: every topic. What the cluster refuses to describe
    becomes a note and its rules are skipped."""
    notes: list[str] = []
    with AdminSession(target) as admin:
        md = admin.metadata()
        names = sorted(md.topics) if topics is None else list(dict.fromkeys(topics))
        for name in names:
            if name not in md.topics:
                raise UnknownTopic(f"unknown topic {name!r}", code="UNKNOWN_TOPIC_OR_PART")
        if OFFSETS_TOPIC in md.topics and OFFSETS_TOPIC not in names:
            names.append(OFFSETS_TOPIC)
        # librdkafka takes one BROKER resource per DescribeConfigs call.
        broker_futures = {
            b: admin.client.describe_configs(
                [ConfigResource(ResourceType.BROKER, str(b))], request_timeout=admin.request_timeout
            )
            for b in sorted(md.brokers)
        }
        topic_futures = (
            admin.client.describe_configs(
                [ConfigResource(ResourceType.TOPIC, n) for n in names],
                request_timeout=admin.request_timeout,
            )
            if names
            else {}
        )
        broker_configs: dict[int, dict[str, str]] = {}
        for b, futures in broker_futures.items():
            try:
                entries = admin.wait(next(iter(futures.values())), "describe broker configs")
            except BrokerUnavailable:
                raise
            except KopsClientError as exc:  # e.g. not authorised: check the rest
                notes.append(f"broker {b} configs unavailable, its rules skipped: {exc}")
                continue
            broker_configs[b] = _entries(entries)[0]
        configs: dict[str, tuple[dict[str, str], frozenset[str]]] = {}
        for res, fut in topic_futures.items():
            try:
                configs[res.name] = _entries(admin.wait(fut, "describe configs", res.name))
            except BrokerUnavailable:
                raise
            except KopsClientError as exc:
                notes.append(f"{res.name}: configs unavailable, config rules skipped: {exc}")
    facts = []
    for name in names:
        parts = md.topics[name].partitions
        values, overrides = configs.get(name, ({}, frozenset()))
        facts.append(
            TopicFacts(
                name=name,
                partitions=len(parts),
                replication_factor=min((len(p.replicas) for p in parts.values()), default=0),
                configs=values,
                overrides=overrides,
            )
        )
    return ClusterFacts(len(md.brokers), facts, broker_configs, notes)


def diagnose(
    target: ClientSettings | str,
    client_config: Mapping[str, str] | None = None,
    options: DoctorOptions | None = None,
    **option_overrides: Any,
) -> DoctorReport:
    """Gather the facts from the cluster and run every rule.

    ``client_config`` is the producer/consumer config to check (not used to connect);
    ``options`` (or its fields as keywords, e.g. ``topics=["orders"]``) choose what to check.
    """
    options = replace(options or DoctorOptions(), **option_overrides)
    settings = ClientSettings.of(target)
    facts = gather(settings, options.topics)
    client = dict(client_config or {})
    return DoctorReport(
        findings=check(facts, client, options),
        brokers=facts.brokers,
        topics_checked=[t.name for t in checked_topics(facts, options)],
        client_roles=client_roles(client),
        notes=list(facts.notes),
    )
