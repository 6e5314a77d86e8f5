"""The Grafana dashboard and the Prometheus alert rules in examples/ name only metrics of
the contract (kops/recipes/metrics.py), so renaming a metric breaks this test, not a
dashboard in production."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kops.recipes.metrics import BROKER_METRICS, WORKER_METRICS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONTRACT = WORKER_METRICS | BROKER_METRICS
HISTOGRAMS = {"kops_delay_lateness_seconds", "kafka_network_requestmetrics_totaltimems"}
# Every contract name starts with one of these; label names and PromQL functions never do.
METRIC = re.compile(r"\b(?:kops|kafka)_[a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metrics an expression names, histogram series folded into their family."""
    out = set()
    for name in METRIC.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
        out.add(name)
    return out


def dashboard_exprs() -> list[str]:
    dash = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = []
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        exprs += [t["expr"] for t in panel["targets"]]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    """The rules of the alerts file: with PyYAML when installed, else read line by line
    (the file keeps every rule's alert, expr and for on one line each for that reason)."""
    text = (EXAMPLES / "prometheus-alerts.yml").read_text()
    try:
        import yaml
    except ImportError:
        rules: list[dict[str, Any]] = []
        for line in text.splitlines():
            m = re.match(r"\s*-?\s*(alert|expr|for):\s*(.+?)\s*$", line)
            if m is None:
                continue
            if m.group(1) == "alert":
                rules.append({})
            rules[-1][m.group(1)] = m.group(2)
        return rules
    doc = yaml.safe_load(text)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_dashboard_uses_only_contract_metrics_and_all_of_them() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used - CONTRACT == set(), f"not in kops/recipes/metrics.py: {used - CONTRACT}"
    assert CONTRACT - used == set(), f"no panel for: {CONTRACT - used}"


def test_alert_rules_name_contract_metrics_and_cover_the_seed() -> None:
    rules = alert_rules()
    assert all({"alert", "expr", "for"} <= set(r) for r in rules)
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        assert names <= CONTRACT, f"{rule['alert']}: unknown {names - CONTRACT}"
    by_name = {r["alert"]: r for r in rules}
    assert len(by_name) == len(rules), "alert names must be unique"
    lag = by_name["KafkaConsumerLagGrowing"]["expr"]
    assert "deriv(kafka_consumergroup_group_lag[10m]) > 0" in lag
    assert "kafka_consumergroup_group_lag_seconds >" in lag
    assert by_name["KafkaConsumerLagGrowing"]["for"] == "10m"
    late = by_name["KopsDelayLatenessOverTier"]["expr"]
    assert "histogram_quantile(0.99" in late and "kops_delay_lateness_seconds_bucket" in late
    dlq = by_name["KopsDLQGrowing"]["expr"]
    assert "increase(kops_dlq_dead_lettered_total[15m])" in dlq and dlq.endswith("> 0")
    urp = by_name["KafkaUnderReplicatedPartitions"]
    assert urp["expr"] == "kafka_server_replicamanager_underreplicatedpartitions > 0"
    assert urp["for"] == "5m"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("rate(kops_delay_lateness_seconds_bucket[5m])", {"kops_delay_lateness_seconds"}),
        ("sum by (topic) (kafka_log_log_size)", {"kafka_log_log_size"}),
        ("kops_dlq_dead_letterd_total", {"kops_dlq_dead_letterd_total"}),  # a typo is kept
    ],
)
def test_metric_names_are_found_in_expressions(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
    assert ("kops_dlq_dead_letterd_total" in names) == bool(names - CONTRACT)
