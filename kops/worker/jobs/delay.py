"""Delay job kinds (registered by name in :data:`kops.worker.registry.BUILTIN_KINDS`).

- ``delay-forwarders`` (long-running): every tier forwarder of a delay ladder.
- ``delay-status`` (periodic): one line per tier (pending, oldest due, lateness p50/p99) at
  DEBUG, a summary as the job's note (``kops up`` shows it), and a warning when a tier's
  oldest pending record is more than a minute overdue (no forwarder keeps up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kops.recipes.delay import (
    CANCEL_TOPIC,
    DEFAULT_MAX_DELAY,
    DEFAULT_TEMPLATE,
    DLQ_TOPIC,
    FORWARDER_GROUP,
    STATS_TOPIC,
    DelayTiers,
)
from kops.recipes.delay.forwarder import DelayForwarders, ForwarderOptions
from kops.recipes.exactly_once import DEFAULT_TRANSACTION_TIMEOUT_MS
from kops.worker.registry import JobContext, RecipeError, take_options

__all__ = ["delay_forwarders", "delay_status_report", "tiers_from_options"]

_TIER_KEYS = {"tiers", "template", "max_delay"}
#: A pending record overdue by more than this is a warning: no forwarder is keeping up.
OVERDUE_WARNING_S = 60.0


def tiers_from_options(options: dict[str, Any]) -> DelayTiers:
    """The ``tiers``/``template``/``max_delay`` options of a job as :class:`DelayTiers`."""
    try:
        return DelayTiers.parse(
            options.get("tiers"),
            template=options.get("template", DEFAULT_TEMPLATE),
            max_delay=options.get("max_delay", DEFAULT_MAX_DELAY),
        )
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def delay_forwarders(options: dict[str, Any], context: JobContext) -> DelayForwarders:
    opts = take_options(
        options,
        _TIER_KEYS
        | {
            "group",
            "cancel_topic",
            "stats_topic",
            "dlq_topic",
            "stats_interval",
            "partitions",
            "instance_id",
            "create_topics",
            "session_timeout_ms",
            "exactly_once",
            "transaction_timeout_ms",
        },
        context.kind,
    )

    def topic_or_none(key: str, default: str) -> str | None:
        value = opts.get(key, default)
        return value or None  # "" or false turns the feature off

    return DelayForwarders(
        context.settings,
        ForwarderOptions(
            tiers=tiers_from_options(opts),
            group=str(opts.get("group", FORWARDER_GROUP)),
            cancel_topic=topic_or_none("cancel_topic", CANCEL_TOPIC),
            stats_topic=topic_or_none("stats_topic", STATS_TOPIC),
            dlq_topic=topic_or_none("dlq_topic", DLQ_TOPIC),
            stats_interval=float(opts.get("stats_interval", 10.0)),
            partitions=int(opts.get("partitions", 1)),
            instance_id=opts.get("instance_id") or None,
            create_topics=bool(opts.get("create_topics", True)),
            session_timeout_ms=int(opts.get("session_timeout_ms", 10000)),
            exactly_once=bool(opts.get("exactly_once", False)),
            transaction_timeout_ms=int(
                opts.get("transaction_timeout_ms", DEFAULT_TRANSACTION_TIMEOUT_MS)
            ),
        ),
    )


def delay_status_report(options: dict[str, Any], context: JobContext) -> Callable[[], None]:
    from kops.recipes.delay.status import delay_status

    opts = take_options(options, _TIER_KEYS | {"group", "stats_topic"}, context.kind)
    tiers = tiers_from_options(opts)
    group = str(opts.get("group", FORWARDER_GROUP))
    stats_topic = opts.get("stats_topic", STATS_TOPIC) or None

    def report() -> None:
        # One line per tier at DEBUG (-vv); the summary goes to the job's note (the panel of
        # `kops up`); only a head overdue long enough to need a person is a warning.
        now = time.time() * 1000
        statuses = delay_status(context.settings, tiers, group=group, stats_topic=stats_topic)
        missing, pending, delivered, worst = 0, 0, 0, 0.0
        for st in statuses:
            if not st.exists:
                missing += 1
                context.log.debug("tier %s: topic %s does not exist", st.tier, st.topic)
                continue
            late_s = (now - st.oldest_due_ms) / 1000 if st.oldest_due_ms is not None else 0.0
            overdue = f", head overdue by {late_s:.1f}s" if late_s > 0 else ""
            pending += st.pending
            delivered += st.delivered
            worst = max(worst, late_s)
            context.log.debug(
                "tier %s: pending %d%s, delivered %d, lateness p50 %s ms p99 %s ms",
                st.tier, st.pending, overdue, st.delivered,
                "-" if st.lateness_p50_ms is None else st.lateness_p50_ms,
                "-" if st.lateness_p99_ms is None else st.lateness_p99_ms,
            )  # fmt: skip
            if late_s > OVERDUE_WARNING_S:
                context.log.warning(
                    "tier %s: the oldest pending record is %.0fs overdue: are the delay "
                    "forwarders (kops up, kops delay worker) running against this cluster?",
                    st.tier, late_s,
                )  # fmt: skip
        text = f"{len(statuses)} tiers: {pending} pending, {delivered} delivered"
        if worst > 0:
            text += f", head overdue by {worst:.1f}s"
        if missing:
            text += f", {missing} tier topic{'s' * (missing != 1)} missing"
        context.note(text)

    return report
