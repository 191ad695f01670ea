"""MQTT topic filters: validation, matching, and whether two filters can match one topic.

Pure functions, MQTT 3.1.1 section 4.7 (the same in MQTT 5): ``+`` matches one level,
``#`` matches the rest (including the parent level: ``a/#`` matches ``a``), and
wildcards at the first level never match topics starting with ``$``.
"""

from __future__ import annotations

from typing import Final

# The MQTT length prefix is 16 bits.
MAX_TOPIC_BYTES: Final = 65535


class TopicFilterError(ValueError):
    """A topic filter breaks the MQTT rules."""


def filter_levels(topic_filter: str) -> tuple[str, ...]:
    """The levels of a valid filter; raises TopicFilterError naming the rule it breaks."""
    if not topic_filter:
        raise TopicFilterError("a topic filter must not be empty")
    if "\0" in topic_filter:
        raise TopicFilterError("a topic filter must not contain NUL")
    if len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        raise TopicFilterError(f"a topic filter is at most {MAX_TOPIC_BYTES} bytes")
    levels = tuple(topic_filter.split("/"))
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicFilterError(f"'#' must be the whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise TopicFilterError(f"'+' must be a whole level in {topic_filter!r}")
    return levels


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` (a concrete topic name) matches ``topic_filter``."""
    pattern = topic_filter.split("/")
    levels = topic.split("/")
    if topic.startswith("$") and pattern[0] in ("+", "#"):
        return False
    for i, want in enumerate(pattern):
        if want == "#":
            return True
        if i >= len(levels):
            return False
        if want not in ("+", levels[i]):
            return False
    return len(pattern) == len(levels)


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic name matches both filters."""
    a, b = first.split("/"), second.split("/")
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True
