"""``batch.validate``: a batch whose header and CRC are fine but whose records a
consumer cannot read is refused before anyone appends it."""

from __future__ import annotations

import pytest
from batch_vectors import POISON, craft
from hypothesis import given
from hypothesis import strategies as st

from edge.protocol import batch as codec
from edge.protocol.errors import CorruptBatch


@pytest.mark.parametrize("name", sorted(POISON))
def test_poisoned_batches_pass_the_crc_but_not_validation(name: str) -> None:
    data = POISON[name]
    codec.verify(data)  # header and CRC alone accept it: that was the hole
    with pytest.raises(CorruptBatch):
        codec.validate(data)


def test_zlib_bomb_is_refused_without_inflating_it_whole() -> None:
    with pytest.raises(CorruptBatch) as info:
        codec.validate(POISON["zlib bomb"])
    assert info.value.data["limit"] == codec.MAX_RECORDS_BYTES


def test_records_earlier_than_the_first_are_valid() -> None:
    # The producer keeps send order; a later record may carry an earlier timestamp.
    data = codec.encode_batch([[0, None, b"a"], [-5, b"k", b"b", {"h": b"v"}]],
                              first_timestamp=1000)
    assert codec.validate(data).record_count == 2


records = st.lists(
    st.tuples(st.integers(-10**6, 10**6), st.none() | st.binary(max_size=8),
              st.binary(max_size=16),
              st.none() | st.dictionaries(st.text(max_size=4), st.binary(max_size=4),
                                          max_size=2)),
    min_size=1, max_size=20)


@given(records, st.sampled_from(list(codec.Compression)))
def test_every_encoded_batch_is_valid(rows: list[tuple], compression: codec.Compression
                                      ) -> None:
    data = codec.encode_batch([[d, k, v, h] if h else [d, k, v] for d, k, v, h in rows],
                              first_timestamp=10**12, compression=compression)
    assert codec.validate(data) == codec.verify(data)


@given(st.binary(max_size=256), st.integers(1, 40), st.sampled_from([0, 1]))
def test_any_records_body_is_validated_or_refused_cleanly(body: bytes, count: int,
                                                          compression: int) -> None:
    data = craft(body, count=count, compression=compression)
    try:
        header = codec.validate(data)
    except CorruptBatch:
        return
    assert len(codec.decode_records(data, 0, header)) == count
