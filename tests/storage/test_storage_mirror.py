"""The mirror's pure rules: conditional append, resume point, ownership."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.protocol.errors import NotContiguous
from edge.storage.mirror import MirrorOwner, Resume, check_chain, resume_from, token_digest


def test_a_chain_that_continues_the_log_is_accepted() -> None:
    check_chain([(10, 13), (13, 14), (14, 20)], 10)


@pytest.mark.parametrize("chain", [
    [(9, 10)],  # a replay of the last batch
    [(0, 5)],  # a replay from the start
    [(11, 12)],  # a gap
    [(10, 12), (13, 14)],  # the second batch leaves a hole
    [(10, 12), (11, 12)],  # the second batch overlaps the first
])
def test_anything_else_is_refused_with_the_log_end(chain: list[tuple[int, int]]) -> None:
    with pytest.raises(NotContiguous) as info:
        check_chain(chain, 10)
    assert info.value.data["log_end_offset"] == 10
    assert info.value.retriable


@given(st.integers(0, 10**6), st.lists(st.integers(1, 1000), min_size=1, max_size=20),
       st.integers(-5, 5))
def test_exactly_one_starting_point_is_accepted(end: int, sizes: list[int], shift: int) -> None:
    bases, base = [], end + shift
    for size in sizes:
        bases.append((base, base + size))
        base += size
    if shift == 0:
        check_chain(bases, end)
    else:
        with pytest.raises(NotContiguous):
            check_chain(bases, end)


def test_resume_from_the_cloud_end_inside_the_edge_log() -> None:
    assert resume_from(7, 0, 10) == (Resume.SEND, 7, "")
    assert resume_from(0, 0, 0).kind is Resume.SEND
    assert resume_from(10, 10, 10).kind is Resume.SEND  # caught up after retention


def test_resume_reports_a_gap_when_the_edge_lost_what_the_cloud_lacks() -> None:
    decision = resume_from(3, 5, 10)
    assert decision.kind is Resume.GAP
    assert "3..4" in decision.reason


def test_resume_reports_a_cloud_ahead_of_the_edge() -> None:
    decision = resume_from(12, 0, 10)
    assert decision.kind is Resume.AHEAD


def test_owner_admits_only_its_site_and_token() -> None:
    owner = MirrorOwner("kitchen", token_digest("secret"), "inc", 0)
    assert owner.admits("kitchen", "secret")
    assert not owner.admits("kitchen", "Secret")
    assert not owner.admits("barn", "secret")
    assert MirrorOwner.parse(owner.to_wire()) == owner


@pytest.mark.parametrize("raw", [None, [], {}, {"site": "a", "token_sha256": "b",
                                                 "incarnation": "c", "edge_partition": True},
                                 {"site": 1, "token_sha256": "b", "incarnation": "c",
                                  "edge_partition": 0}])
def test_a_malformed_owner_is_no_owner(raw: object) -> None:
    assert MirrorOwner.parse(raw) is None
