"""MQTT topic filters: validity, matching, overlap (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mqtt.topics import TopicFilterError, filter_levels, filters_overlap, matches


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("headwater/+/temperature", "headwater/dev1/temperature", True),
        ("headwater/+/temperature", "headwater/dev1/humidity", False),
        ("headwater/+/temperature", "headwater/dev1/temperature/x", False),
        ("headwater/#", "headwater", True),  # '#' includes the parent level
        ("headwater/#", "headwater/a/b/c", True),
        ("#", "anything/at/all", True),
        ("+/+", "a/b", True),
        ("+", "a/b", False),
        ("+/b", "/b", True),  # an empty level is a level
        ("#", "$SYS/broker", False),  # wildcards never match $ topics at the first level
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "+a/b", "a\0b"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(TopicFilterError):
        filter_levels(bad)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("headwater/+/temperature", "headwater/dev1/#", True),
        ("headwater/+/temperature", "headwater/+/humidity", False),
        ("a/b", "a/b/c", False),
        ("a/#", "a", True),
        ("#", "x/y", True),
        ("a/+", "+/b", True),
        ("a/+/c", "a/b", False),
    ],
)
def test_overlap(a: str, b: str, expected: bool) -> None:
    assert filters_overlap(a, b) is expected
    assert filters_overlap(b, a) is expected


levels = st.sampled_from(["a", "b", "", "+", "#"])
names = st.sampled_from(["a", "b", ""])


@st.composite
def valid_filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(["a", "b", "", "+"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


@given(valid_filters(), valid_filters(), st.lists(names, min_size=1, max_size=6))
def test_overlap_agrees_with_matching(a: str, b: str, topic_levels: list[str]) -> None:
    # If a concrete topic matches both, the filters must be reported as overlapping.
    topic = "/".join(topic_levels)
    if matches(a, topic) and matches(b, topic):
        assert filters_overlap(a, b)
