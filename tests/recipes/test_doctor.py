"""kops doctor's rules, each with a good and a bad case on plain data (no broker), and the
gather step against a real broker."""

from __future__ import annotations

import json
import uuid

import pytest

from kops.admin import create_topic
from kops.client import UnknownTopic
from kops.recipes.bench.load import MB, BenchResult
from kops.recipes.bench.sweep import SweepPoint, SweepResult
from kops.recipes.doctor import (
    RULES,
    ClusterFacts,
    DoctorOptions,
    TopicFacts,
    check,
    check_client,
    check_cluster,
    connection_config,
    diagnose,
    gather,
    parse_properties,
    sweep_recommendation,
    tier_delay,
)

DAY_MS = 86_400_000


def rules(findings) -> list[str]:
    return [f.rule for f in findings]


def topic(name="orders", partitions=6, rf=3, overrides=(), **configs) -> TopicFacts:
    configs = {"min.insync.replicas": "2", "retention.ms": str(7 * DAY_MS), **configs}
    return TopicFacts(name, partitions, rf, configs, frozenset(overrides))


def cluster(*topics: TopicFacts, brokers=3, **broker_configs) -> ClusterFacts:
    base = {"unclean.leader.election.enable": "false", "default.replication.factor": "3"}
    configs = {b: {**base, **broker_configs} for b in range(brokers)}
    offsets = TopicFacts("__consumer_offsets", 50, min(3, brokers), {})
    return ClusterFacts(brokers, [*topics, offsets], configs)


GOOD_PRODUCER = {"acks": "all", "enable.idempotence": "true"}


# --------------------------------------------------------------------------- producer


def test_acks_all_is_good_and_the_default():
    assert check_client(GOOD_PRODUCER) == []
    assert check_client({"enable.idempotence": "true"}) == []  # acks defaults to all
    assert check_client({"acks": "-1", "enable.idempotence": "true"}) == []


@pytest.mark.parametrize("acks", ["0", "1"])
def test_acks_0_or_1_loses_records(acks):
    [f] = [f for f in check_client({"acks": acks, "enable.idempotence": "true"})]
    assert (f.rule, f.severity, f.subject) == ("producer-acks", "error", f"acks={acks}")
    assert "acks=all" in f.fix
    # librdkafka's alias counts the same
    assert rules(check_client({"request.required.acks": acks})).count("producer-acks") == 1


def test_idempotence_off_duplicates_on_retry():
    for config in ({"acks": "all"}, {"acks": "all", "enable.idempotence": "false"}):
        found = {f.rule: f for f in check_client(config)}
        assert found["producer-idempotence"].severity == "error"
        assert "enable.idempotence=true" in found["producer-idempotence"].fix


def test_java_defaults_to_idempotence_unless_a_setting_turns_it_off():
    assert check_client({"acks": "all"}, "java") == []
    found = rules(check_client({"acks": "1"}, "java"))
    assert "producer-idempotence" in found  # Java silently drops idempotence for acks=1


def test_in_flight_above_5_with_retries_reorders():
    [f] = [f for f in check_client({"acks": "all"}) if f.rule == "producer-in-flight"]
    assert f.severity == "warning" and "(the default)" in f.subject  # librdkafka: 1000000
    good = {"acks": "all", "max.in.flight.requests.per.connection": "1", "retries": "5"}
    assert "producer-in-flight" not in rules(check_client(good))
    # no retries, no reordering (that is a retries finding instead)
    assert "producer-in-flight" not in rules(
        check_client({**good, "max.in.flight": "10", "retries": "0"})
    )


def test_in_flight_above_5_with_idempotence_is_refused():
    bad = {**GOOD_PRODUCER, "max.in.flight.requests.per.connection": "10"}
    [f] = check_client(bad)
    assert (f.rule, f.severity) == ("producer-in-flight", "error")
    # idempotence with the default in-flight: librdkafka caps it at 5 itself
    assert check_client(GOOD_PRODUCER) == []
    assert check_client({**GOOD_PRODUCER, "max.in.flight": "5"}) == []


def test_retries_zero():
    assert "producer-retries" in rules(check_client({**GOOD_PRODUCER, "retries": "0"}))
    assert "producer-retries" not in rules(check_client({**GOOD_PRODUCER, "retries": "10"}))


# --------------------------------------------------------------------------- consumer


def test_auto_commit_default_is_at_most_once_in_librdkafka():
    [f] = check_client({"group.id": "billing"})  # enable.auto.commit defaults to true
    assert (f.rule, f.severity) == ("consumer-auto-commit", "error")
    assert "(the default)" in f.subject
    assert "enable.auto.offset.store=false" in f.fix
    assert rules(check_client({"group.id": "g", "enable.auto.commit": "TRUE"})) == [
        "consumer-auto-commit"
    ]


def test_auto_commit_off_or_with_manual_offset_store_is_good():
    assert check_client({"group.id": "g", "enable.auto.commit": "false"}) == []
    assert check_client({"group.id": "g", "enable.auto.offset.store": "false"}) == []


def test_auto_commit_java_is_a_warning():
    [f] = check_client({"group.id": "g"}, "java")
    assert (f.rule, f.severity) == ("consumer-auto-commit", "warning")
    assert check_client({"group.id": "g", "enable.auto.commit": "false"}, "java") == []


def test_connection_only_config_is_not_checked_as_a_client():
    assert check_client({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}) == []
    both = {"acks": "1", "group.id": "g", "security.protocol": "SSL"}
    assert {"producer-acks", "consumer-auto-commit"} <= set(rules(check_client(both)))
    # what doctor connects with: no producer or consumer behaviour
    assert connection_config(both) == {"security.protocol": "SSL"}


# --------------------------------------------------------------------------- topics, brokers


def test_replication_factor():
    assert check_cluster(cluster(topic(rf=3))) == []
    [f] = check_cluster(cluster(topic(rf=1, **{"min.insync.replicas": "1"})))
    assert (f.rule, f.severity, f.subject) == ("replication-factor", "error", "orders")
    assert "kafka-reassign-partitions" in f.fix


def test_replication_factor_on_a_single_broker_is_a_warning():
    [f] = check_cluster(cluster(topic(rf=1, **{"min.insync.replicas": "1"}), brokers=1))
    assert (f.rule, f.severity) == ("replication-factor", "warning")
    assert "1 broker" in f.message
    # two brokers, RF 1: it could have 2
    [f] = check_cluster(cluster(topic(rf=1, **{"min.insync.replicas": "1"}), brokers=2))
    assert f.severity == "error"


def test_min_insync_replicas_below_2_with_rf_3_loses_acked_writes():
    [f] = check_cluster(cluster(topic(rf=3, **{"min.insync.replicas": "1"})))
    assert (f.rule, f.severity) == ("min-insync-replicas", "error")
    assert "min.insync.replicas=2" in f.fix
    assert check_cluster(cluster(topic(rf=3, **{"min.insync.replicas": "2"}))) == []


def test_min_insync_replicas_equal_to_rf_stops_writes_on_one_broker_loss():
    [f] = check_cluster(cluster(topic(rf=3, **{"min.insync.replicas": "3"})))
    assert (f.rule, f.severity) == ("min-insync-replicas", "warning")
    assert "min.insync.replicas=2" in f.fix
    [f] = [f for f in check_cluster(cluster(topic(rf=1, **{"min.insync.replicas": "2"}), brokers=1))
           if f.rule == "min-insync-replicas"]  # fmt: skip
    assert "every acks=all write fails" in f.message
    # RF 1, min.insync.replicas 1: the only choice, no second finding
    facts = cluster(topic(rf=1, **{"min.insync.replicas": "1"}), brokers=1)
    assert rules(check_cluster(facts)) == ["replication-factor"]


def test_unclean_leader_election_on_a_topic():
    bad = topic(
        overrides={"unclean.leader.election.enable"}, **{"unclean.leader.election.enable": "true"}
    )
    [f] = check_cluster(cluster(bad))
    assert (f.rule, f.severity, f.subject) == ("unclean-leader-election", "error", "orders")
    assert "unclean.leader.election.enable=false" in f.fix
    assert check_cluster(cluster(topic(**{"unclean.leader.election.enable": "false"}))) == []


def test_unclean_leader_election_on_the_broker_is_reported_once_per_broker():
    inherited = topic(**{"unclean.leader.election.enable": "true"})
    found = check_cluster(
        cluster(inherited, brokers=3, **{"unclean.leader.election.enable": "true"})
    )
    assert [f.subject for f in found] == ["broker 0", "broker 1", "broker 2"]
    assert {f.rule for f in found} == {"unclean-leader-election"}


def test_default_replication_factor():
    found = check_cluster(cluster(brokers=3, **{"default.replication.factor": "1"}))
    assert rules(found) == ["default-replication-factor"] * 3
    assert check_cluster(cluster(brokers=1, **{"default.replication.factor": "1"})) == []


def test_delay_tier_retention_shorter_than_its_delay():
    assert tier_delay("kops.delay.5m") == 300
    assert tier_delay("kops.delay.cancel") is None and tier_delay("orders") is None
    assert tier_delay("retry_90", "retry_{seconds}") == 90
    [f] = check_cluster(cluster(topic("kops.delay.2h", **{"retention.ms": "3600000"})))
    assert (f.rule, f.severity, f.subject) == ("delay-tier-retention", "error", "kops.delay.2h")
    assert "retention.ms=604800000" in f.fix
    assert check_cluster(cluster(topic("kops.delay.2h", **{"retention.ms": "7200000"}))) == []
    assert check_cluster(cluster(topic("kops.delay.2h", **{"retention.ms": "-1"}))) == []
    # another template: only its names are tiers
    opts = DoctorOptions(delay_template="app.delay-{tier}")
    short = topic("app.delay-10m", **{"retention.ms": "1000"})
    assert rules(check_cluster(cluster(short), opts)) == ["delay-tier-retention"]
    assert check_cluster(cluster(topic("kops.delay.2h", **{"retention.ms": "1000"})), opts) == []


def test_dlq_retention_shorter_than_the_replay_window():
    [f] = check_cluster(cluster(topic("orders.dlq", **{"retention.ms": str(DAY_MS)})))
    assert (f.rule, f.severity, f.subject) == ("dlq-retention", "error", "orders.dlq")
    assert f"retention.ms={7 * DAY_MS}" in f.fix
    assert check_cluster(cluster(topic("orders.dlq"))) == []  # 7d, the default window
    one_day = DoctorOptions(dlq_replay_window=86400)
    assert (
        check_cluster(cluster(topic("orders.dlq", **{"retention.ms": str(DAY_MS)})), one_day) == []
    )
    # not a DLQ by name: no window applies
    assert check_cluster(cluster(topic("orders", **{"retention.ms": "1000"}))) == []


def test_consumer_offsets_replication_factor():
    assert check_cluster(cluster(brokers=3)) == []
    weak = ClusterFacts(3, [TopicFacts("__consumer_offsets", 50, 1, {})], {})
    [f] = check_cluster(weak)
    assert (f.rule, f.severity, f.subject) == (
        "offsets-replication-factor",
        "error",
        "__consumer_offsets",
    )
    assert check_cluster(ClusterFacts(1, [TopicFacts("__consumer_offsets", 50, 1, {})], {})) == []
    # not created yet: the broker setting it will be created with
    before = ClusterFacts(3, [], {0: {"offsets.topic.replication.factor": "1"}})
    [f] = check_cluster(before)
    assert f.subject == "broker 0" and "offsets.topic.replication.factor=3" in f.fix
    assert check_cluster(ClusterFacts(3, [], {0: {"offsets.topic.replication.factor": "3"}})) == []


def test_partitions_below_the_sweep_recommendation():
    opts = DoctorOptions(topics=["orders"], sweep_partitions=8)
    [f] = check_cluster(cluster(topic(partitions=4)), opts)
    assert (f.rule, f.severity, f.subject) == ("sweep-partitions", "warning", "orders")
    assert "--partitions 8" in f.fix
    assert check_cluster(cluster(topic(partitions=8)), opts) == []


def test_sweep_recommendation_from_a_real_sweep_result():
    def bench(kind, mb):
        return BenchResult(kind, "scratch", 1000, mb * MB, 1.0, None, partitions=1)

    point = SweepPoint(1, bench("produce", 1), bench("consume", 2))
    data = json.loads(json.dumps(SweepResult([point]).to_dict(target_mb_s=4.0)))
    assert sweep_recommendation(data) == data["recommendation"]["partitions"] >= 4
    no_target = json.loads(json.dumps(SweepResult([point]).to_dict()))
    with pytest.raises(ValueError, match="target-throughput"):
        sweep_recommendation(no_target)
    with pytest.raises(ValueError, match="not a `kops bench sweep"):
        sweep_recommendation([1, 2])


def test_check_orders_errors_first_and_ignores_rules():
    facts = cluster(topic(rf=1), topic("orders.dlq", **{"retention.ms": "1000"}), brokers=1)
    found = check(facts, {"acks": "1"})
    severities = [f.severity for f in found]
    assert severities == sorted(severities, key=lambda s: s != "error")
    assert {"producer-acks", "dlq-retention", "replication-factor"} <= set(rules(found))
    quiet = check(facts, {"acks": "1"}, DoctorOptions(ignore=frozenset({"replication-factor"})))
    assert "replication-factor" not in rules(quiet) and "producer-acks" in rules(quiet)
    assert set(rules(found)) <= set(RULES)


def test_parse_properties():
    text = (
        "# a comment\n! another\n\nacks = all\nbootstrap.servers=a:9092,b:9092\n"
        'sasl.jaas.config=org.Login required \\\n    username="u";\nkey: value\nspaced value\n'
        "tab=a\\tb\nempty=\n"
    )
    assert parse_properties(text) == {
        "acks": "all",
        "bootstrap.servers": "a:9092,b:9092",
        "sasl.jaas.config": 'org.Login required username="u";',
        "key": "value",
        "spaced": "value",
        "tab": "a\tb",
        "empty": "",
    }


# --------------------------------------------------------------------------- a real broker


def test_gather_and_diagnose_against_a_broker(kafka_broker):
    run = uuid.uuid4().hex[:8]
    template = f"doctor-{run}.delay.{{tier}}"
    short_tier = f"doctor-{run}.delay.10m"
    long_tier = f"doctor-{run}.delay.1m"
    dlq = f"doctor-{run}.dlq"
    unclean = f"doctor-{run}-unclean"
    create_topic(kafka_broker, short_tier, 1, config={"retention.ms": "60000"})
    create_topic(kafka_broker, long_tier, 1, config={"retention.ms": str(DAY_MS)})
    create_topic(kafka_broker, dlq, 2, config={"retention.ms": "3600000"})
    create_topic(kafka_broker, unclean, 3, config={"unclean.leader.election.enable": "true"})
    names = [short_tier, long_tier, dlq, unclean]

    facts = gather(kafka_broker, names)
    assert facts.brokers >= 1 and facts.broker_configs
    got = {t.name: t for t in facts.topics}
    assert set(names) <= set(got)
    assert got[dlq].partitions == 2 and got[unclean].partitions == 3
    assert got[short_tier].configs["retention.ms"] == "60000"
    assert "retention.ms" in got[short_tier].overrides
    assert "unclean.leader.election.enable" in got[unclean].overrides

    report = diagnose(kafka_broker, {"acks": "1"}, topics=names, delay_template=template)
    by = {(f.rule, f.subject) for f in report.findings}
    assert ("delay-tier-retention", short_tier) in by
    assert ("dlq-retention", dlq) in by
    assert ("unclean-leader-election", unclean) in by
    assert ("producer-acks", "acks=1") in by
    for rule in ("delay-tier-retention", "dlq-retention", "unclean-leader-election"):
        assert (rule, long_tier) not in by
    assert report.topics_checked == names and report.client_roles == ["producer"]


def test_gather_refuses_an_unknown_topic(kafka_broker):
    with pytest.raises(UnknownTopic):
        gather(kafka_broker, [f"doctor-missing-{uuid.uuid4().hex[:8]}"])
