"""A topic's settings: which there are, the rules they obey, which may change later.

CREATE_TOPIC and ALTER_TOPIC check settings with the same rules, the ones an SPU
applies (``LogConfig`` for storage). Every refusal is ``InvalidConfig`` whose
``data.setting`` names the setting at fault.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

from edge.net.bandwidth import MAX_PRIORITY, MIN_PRIORITY
from edge.protocol.errors import InvalidConfig
from edge.protocol.sc_api import COMPRESSION
from edge.storage.budget import BUDGET_KEYS, TopicBudget
from edge.storage.config import STORAGE_KEYS, LogConfig

TOPIC_CONFIG_KEYS: Final = STORAGE_KEYS | BUDGET_KEYS | {
    "compression", "min_insync_replicas", "unclean_election", "upstream", "upstream_priority"}
# The SC's own mark on a cloud mirror topic's config (edge/sc/sites.py): kept, never set.
MIRROR_MARK: Final = "mirror"
# Settings a topic keeps for life, and why. The rest take effect on the live topic:
# SPUs apply storage settings and min_insync_replicas to their open logs, the SC
# reads unclean_election at each election, producers read compression from the
# metadata they watch, the uplinks read upstream_priority, and SPUs apply the
# disk budget settings (budget_bytes, budget_policy) from the next append.
FIXED_SETTINGS: Final = {
    "partitions": "records are routed by key hash over the partition count, so another "
                  "count would move keys (and their order) to other partitions; re-create "
                  "the topic to change it",
    "replication": "replicas are placed when the topic is made and moving them is not "
                   "built; re-create the topic to change it",
    "upstream": "a cloud mirror holds the edge log from its first offset, which retention "
                "may already have removed, so it starts with the topic; re-create the "
                "topic to change it",
    MIRROR_MARK: "the SC marks cloud mirror topics itself",
}


def validate_topic_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a topic's settings with the same rules the SPU applies."""
    unknown = sorted(set(config) - TOPIC_CONFIG_KEYS)
    if unknown:
        raise InvalidConfig(f"unknown topic setting(s): {', '.join(unknown)}",
                            setting=unknown[0])
    if config.get("compression", "none") not in COMPRESSION:
        raise InvalidConfig(f"compression must be one of {', '.join(COMPRESSION)}",
                            setting="compression")
    if not _is_int(config.get("min_insync_replicas", 1), 1, None):
        raise InvalidConfig("min_insync_replicas must be an integer >= 1",
                            setting="min_insync_replicas")
    for flag in ("unclean_election", "upstream"):
        if not isinstance(config.get(flag, False), bool):
            raise InvalidConfig(f"{flag} must be true or false", setting=flag)
    if not _is_int(config.get("upstream_priority", MIN_PRIORITY), MIN_PRIORITY, MAX_PRIORITY):
        raise InvalidConfig(f"upstream_priority must be an integer {MIN_PRIORITY}..{MAX_PRIORITY} "
                            "(higher is sent first)", setting="upstream_priority")
    try:
        TopicBudget.from_config(dict(config))
    except ValueError as exc:
        key = "budget_policy" if "budget_policy" in str(exc) else "budget_bytes"
        raise InvalidConfig(str(exc), setting=key) from None
    for key in sorted(STORAGE_KEYS & config.keys()):
        try:
            LogConfig(**{key: config[key]})
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"invalid topic setting: {exc}", setting=key) from None
    return dict(config)


def check_topic_settings(config: Mapping[str, Any], replication: int) -> dict[str, Any]:
    """The settings of a topic of ``replication`` replicas, checked."""
    checked = validate_topic_config(config)
    min_isr = checked.get("min_insync_replicas", 1)
    if min_isr > replication:
        raise InvalidConfig(f"min_insync_replicas {min_isr} exceeds replication {replication}",
                            setting="min_insync_replicas")
    return checked


def altered_config(current: Mapping[str, Any], changes: Mapping[str, Any],
                   reset: Collection[str], *, replication: int) -> dict[str, Any]:
    """The settings after ALTER_TOPIC: ``current`` with ``changes`` set and the
    settings in ``reset`` back to their defaults (absent), checked as a whole."""
    for key in (*changes, *reset):
        if key in FIXED_SETTINGS:
            raise InvalidConfig(f"{key} cannot change after creation: {FIXED_SETTINGS[key]}",
                                setting=key)
    both = sorted(set(changes) & set(reset))
    if both:
        raise InvalidConfig(f"{both[0]} is both set and reset", setting=both[0])
    unknown = sorted(set(reset) - TOPIC_CONFIG_KEYS)
    if unknown:
        raise InvalidConfig(f"unknown topic setting(s): {', '.join(unknown)}",
                            setting=unknown[0])
    config = {k: v for k, v in current.items() if k not in reset}
    config.update(changes)
    own = {k: v for k, v in config.items() if k != MIRROR_MARK}
    check_topic_settings(own, replication)
    return config


def _is_int(value: object, low: int, high: int | None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))
