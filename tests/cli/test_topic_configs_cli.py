"""``kops topic config --show`` and ``kops topic describe`` say whether kops acts on
each config, in the table (KOPS column) and in --json (kops_acts)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from kops.broker.topic_configs import CATALOGUE

Kops = Callable[..., subprocess.CompletedProcess[str]]


def _row(stdout: str, name: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [name])


def test_config_show_lists_every_config_with_kops_column(kops: Kops, topic: str) -> None:
    created = kops("topic", "create", topic, "-p", "1", "--config", "flush.ms=1000")
    assert created.returncode == 0, created.stderr

    shown = kops("topic", "config", topic, "--show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[:4] == ["CONFIG", "VALUE", "SOURCE", "KOPS"]
    assert _row(shown.stdout, "flush.ms") == ["flush.ms", "1000", "topic", "stores"]
    assert _row(shown.stdout, "retention.ms")[-1] == "acts"
    assert _row(shown.stdout, "compression.type")[-1] == "acts"

    as_json = kops("topic", "config", topic, "--json")  # --json implies --show
    assert as_json.returncode == 0, as_json.stderr
    configs = json.loads(as_json.stdout)
    assert set(CATALOGUE) <= set(configs)
    assert configs["flush.ms"]["value"] == "1000"
    assert configs["flush.ms"]["source"] == "DYNAMIC_TOPIC_CONFIG"
    assert configs["flush.ms"]["kops_acts"] is False
    assert configs["preallocate"]["kops_acts"] is False
    assert configs["segment.bytes"]["kops_acts"] is True


def test_config_set_then_show_shows_the_new_value(kops: Kops, topic: str) -> None:
    assert kops("topic", "create", topic, "-p", "1").returncode == 0
    changed = kops("topic", "config", topic, "--set", "compression.type=zstd", "--json")
    assert changed.returncode == 0, changed.stderr
    assert "updated topic" in changed.stderr
    entry = json.loads(changed.stdout)["compression.type"]
    assert (entry["value"], entry["kops_acts"]) == ("zstd", True)


def test_describe_marks_what_kops_acts_on(kops: Kops, topic: str) -> None:
    assert kops("topic", "create", topic, "-p", "1", "--config", "preallocate=true").returncode == 0
    human = kops("topic", "describe", topic)
    assert human.returncode == 0, human.stderr
    assert _row(human.stdout, "preallocate") == ["preallocate", "true", "topic", "stores"]
    described = json.loads(kops("topic", "describe", topic, "--json").stdout)
    assert described["configs"]["preallocate"]["kops_acts"] is False
    assert described["configs"]["retention.ms"]["kops_acts"] is True


def test_config_with_nothing_to_do_is_a_usage_error(kops: Kops, topic: str) -> None:
    result = kops("topic", "config", topic)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: ")
    assert "--show" in result.stderr
