"""Replica placement: exact orders for small clusters, properties for any cluster."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.sc.assignment import SpuSlot, assign, led_by, rack_alternating

RACKS = ("barn", "dairy", "shed", None)


@st.composite
def clusters(draw: st.DrawFn) -> list[SpuSlot]:
    """1-9 SPUs with distinct ids, on racks or not, some already leading partitions."""
    ids = draw(st.lists(st.integers(0, 50), min_size=1, max_size=9, unique=True))
    return [SpuSlot(i, draw(st.sampled_from(RACKS)), draw(st.integers(0, 4))) for i in ids]


@st.composite
def balanced(draw: st.DrawFn) -> tuple[list[SpuSlot], int]:
    """Racks of equal size, in shuffled order, and a replication they can all host."""
    racks = draw(st.integers(1, 4))
    per_rack = draw(st.integers(1, 3))
    spus = [SpuSlot(r * 10 + k, f"rack{r}", 0) for r in range(racks) for k in range(per_rack)]
    return draw(st.permutations(spus)), draw(st.integers(1, racks))


def slots(*racks: str | None) -> list[SpuSlot]:
    return [SpuSlot(i + 1, rack, 0) for i, rack in enumerate(racks)]


# rack_alternating -----------------------------------------------------------------


def test_racks_alternate_by_name_then_the_unracked_last() -> None:
    spus = slots("b", "a", "b", None, "a", "a")
    assert [s.id for s in rack_alternating(spus)] == [2, 1, 4, 5, 3, 6]


@given(clusters())
def test_rack_alternating_is_a_permutation(spus: list[SpuSlot]) -> None:
    assert sorted(rack_alternating(spus)) == sorted(spus)


@given(clusters())
def test_neighbours_share_a_rack_only_when_no_other_rack_is_left(spus: list[SpuSlot]) -> None:
    order = rack_alternating(spus)
    for i in range(len(order) - 1):
        if order[i].rack == order[i + 1].rack:
            assert {s.rack for s in order[i:]} == {order[i].rack}


# assign -----------------------------------------------------------------------------


def test_too_few_spus_is_none_and_bad_counts_are_refused() -> None:
    assert assign(3, 3, slots(None, None)) is None
    assert assign(1, 1, []) is None
    with pytest.raises(ValueError):
        assign(0, 1, slots(None))
    with pytest.raises(ValueError):
        assign(1, 0, slots(None))


def test_three_spus_three_partitions_rotate_leaders_and_followers() -> None:
    assert assign(3, 2, slots(None, None, None)) == [[1, 2], [2, 3], [3, 1]]


def test_a_new_topic_starts_on_the_spu_leading_least() -> None:
    spus = [SpuSlot(1, None, 3), SpuSlot(2, None, 0), SpuSlot(3, None, 2)]
    assert assign(2, 1, spus) == [[2], [3]]


def test_two_racks_alternate_within_each_partition() -> None:
    spus = slots("a", "a", "b", "b")
    placement = assign(4, 2, spus)
    assert placement == [[1, 3], [3, 2], [2, 4], [4, 1]]
    rack = {s.id: s.rack for s in spus}
    assert all(rack[x] != rack[y] for x, y in placement)


def test_two_racks_stay_apart_past_the_first_round() -> None:
    spus = slots("a", "a", "b", "b")
    placement = assign(8, 2, spus)
    assert placement is not None
    rack = {s.id: s.rack for s in spus}
    assert [p for p in placement if rack[p[0]] == rack[p[1]]] == []


@given(clusters(), st.integers(1, 40), st.integers(1, 10))
def test_none_exactly_when_there_are_fewer_spus_than_replicas(
    spus: list[SpuSlot], partitions: int, replication: int
) -> None:
    assert (assign(partitions, replication, spus) is None) == (len(spus) < replication)


@given(clusters(), st.integers(1, 40), st.data())
def test_every_partition_gets_distinct_known_spus(
    spus: list[SpuSlot], partitions: int, data: st.DataObject
) -> None:
    replication = data.draw(st.integers(1, len(spus)))
    placement = assign(partitions, replication, spus)
    assert placement is not None
    assert len(placement) == partitions
    ids = {s.id for s in spus}
    for replicas in placement:
        assert len(replicas) == replication
        assert len(set(replicas)) == replication
        assert set(replicas) <= ids


@given(clusters(), st.integers(1, 40))
def test_leaders_spread_evenly_starting_from_the_least_loaded(
    spus: list[SpuSlot], partitions: int
) -> None:
    placement = assign(partitions, 1, spus)
    assert placement is not None
    led = Counter(replicas[0] for replicas in placement)
    counts = [led[s.id] for s in spus]
    assert max(counts) - min(counts) <= 1
    load = {s.id: s.leaders for s in spus}
    assert load[placement[0][0]] == min(load.values())


@given(balanced(), st.data())
def test_replicas_of_a_partition_sit_on_distinct_racks(
    cluster: tuple[list[SpuSlot], int], data: st.DataObject
) -> None:
    spus, replication = cluster
    # Only the first round over the SPUs: see test_two_racks_stay_apart_past_the_first_round.
    placement = assign(data.draw(st.integers(1, len(spus))), replication, spus)
    assert placement is not None
    rack = {s.id: s.rack for s in spus}
    for replicas in placement:
        assert len({rack[r] for r in replicas}) == replication


@given(clusters(), st.integers(1, 20), st.integers(1, 4), st.data())
def test_placement_does_not_depend_on_the_order_spus_are_listed(
    spus: list[SpuSlot], partitions: int, replication: int, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(spus))
    assert assign(partitions, replication, shuffled) == assign(partitions, replication, spus)


# led_by -----------------------------------------------------------------------------


def test_led_by_moves_a_replica_to_the_front_or_replaces_the_last() -> None:
    placement = [[1, 2, 3], [2, 3, 4], [3, 4, 1]]
    assert led_by(placement, 3) == [[3, 1, 2], [3, 2, 4], [3, 4, 1]]
    assert led_by(placement, 9) == [[9, 1, 2], [9, 2, 3], [9, 3, 4]]


@given(clusters(), st.integers(1, 20), st.data())
def test_led_by_keeps_replicas_distinct_and_their_number(
    spus: list[SpuSlot], partitions: int, data: st.DataObject
) -> None:
    replication = data.draw(st.integers(1, len(spus)))
    placement = assign(partitions, replication, spus)
    assert placement is not None
    spu = data.draw(st.sampled_from([s.id for s in spus]))
    for before, after in zip(placement, led_by(placement, spu), strict=True):
        assert after[0] == spu
        assert len(after) == len(set(after)) == replication
        if spu in before:
            assert set(after) == set(before)
        else:
            assert after[1:] == before[: replication - 1]
