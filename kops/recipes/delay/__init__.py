"""Tiered delay topics: send a record now, have it delivered to its topic later.

- `tiers`: the tier ladder, `send_delayed`, `cancel_delayed`, topic creation;
- `forwarder`: the tier forwarders that move each record on when it is due (one tier's
  loop in `tier_forwarder`; produce rounds, target checks and dead letters in `delivery`);
- `status`: pending records and lateness per tier (`kops delay status`);
- `cancel`: the compacted cancel topic, read by every forwarder.

The names users import (`from kops.recipes.delay import DelayTiers, send_delayed`)
live here; `tiers` documents the design.
"""

from kops.recipes.delay.tiers import (
    CANCEL_TOPIC,
    DEFAULT_MAX_DELAY,
    DEFAULT_TEMPLATE,
    DEFAULT_TIERS,
    DLQ_TOPIC,
    FORWARDER_GROUP,
    STATS_TOPIC,
    DelayTiers,
    cancel_delayed,
    check_target_exists,
    ensure_tier_topics,
    format_tier,
    new_message_id,
    send_delayed,
)

__all__ = [
    "CANCEL_TOPIC",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_TEMPLATE",
    "DEFAULT_TIERS",
    "DLQ_TOPIC",
    "FORWARDER_GROUP",
    "STATS_TOPIC",
    "DelayTiers",
    "cancel_delayed",
    "check_target_exists",
    "ensure_tier_topics",
    "format_tier",
    "new_message_id",
    "send_delayed",
]
