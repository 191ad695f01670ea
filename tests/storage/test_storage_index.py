"""OffsetIndex: the in-memory sparse index and its file encoding."""

from __future__ import annotations

from array import array

from hypothesis import given
from hypothesis import strategies as st

from edge.storage.index import ENTRY, OffsetIndex, encode_entries


def built(positions: list[int], interval: int = 100) -> OffsetIndex:
    """Index batches of 1 offset starting at ``positions`` (sorted, first is 0)."""
    index = OffsetIndex(interval)
    for rel, pos in enumerate(positions):
        index.maybe_add(rel, pos)
    return index


def test_an_entry_every_interval_and_none_at_zero() -> None:
    index = built([0, 40, 80, 120, 160, 200, 330, 340])
    assert list(index.positions) == [120, 330]
    assert list(index.relatives) == [3, 6]
    assert index.floor(0) == (0, 0)
    assert index.floor(5) == (3, 120)
    assert index.floor(99) == (6, 330)


def test_last_within_takes_the_tighter_limit() -> None:
    index = built([0, 100, 200, 300, 400])  # entries at every batch from 100 on
    assert index.last_within(350, 10) == 300
    assert index.last_within(350, 2) == 200
    assert index.last_within(99, 10) == 0


def test_file_bytes_round_trip_and_partial_entries_are_ignored() -> None:
    index = built(list(range(0, 5000, 70)))
    data = index.take_pending()
    assert data[:8] == ENTRY.pack(index.relatives[0], index.positions[0])
    again = OffsetIndex.from_bytes(data + b"\x01\x02\x03", 100)
    assert again.relatives == index.relatives
    assert again.positions == index.positions
    assert again.written == len(again)
    assert index.take_pending() == b""


def test_truncation_and_validation() -> None:
    index = built(list(range(0, 2000, 100)))
    count = len(index)
    index.truncate_at(1000)
    assert max(index.positions) < 1000
    assert len(index) < count
    assert index.valid_prefix(10_000) == len(index)
    assert index.valid_prefix(500) == 4  # entries at 100..400 fit a 500-byte segment
    bad = OffsetIndex.from_bytes(encode_entries(array("I", [1, 5, 3]), array("I", [10, 20, 30])), 8)
    assert bad.valid_prefix(100) == 2


@given(st.lists(st.integers(1, 500), min_size=1, max_size=200), st.integers(64, 1024))
def test_floor_matches_a_linear_scan(sizes: list[int], interval: int) -> None:
    positions = [sum(sizes[:i]) for i in range(len(sizes))]
    index = built(positions, interval)
    entries = list(zip(index.relatives, index.positions, strict=True))
    for rel in range(len(positions)):
        expect = max((e for e in entries if e[0] <= rel), default=(0, 0))
        assert index.floor(rel) == expect
        assert index.floor(rel)[1] <= positions[rel]
        # never more than one interval (plus the batch itself) to scan from the entry
        assert positions[rel] - index.floor(rel)[1] < interval + max(sizes)
