"""Hypothesis strategies and small helpers shared by the protocol tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from edge.protocol import batch

I64 = (-(2**63), 2**63 - 1)
I32 = (-(2**31), 2**31 - 1)
I16 = (-(2**15), 2**15 - 1)

keys = st.none() | st.binary(max_size=24)
values = st.binary(max_size=48)
headers = st.dictionaries(st.text(max_size=8), st.binary(max_size=8), max_size=3)
# Deltas may be negative (a device clock stepping back); first + delta stays an i64.
deltas = st.integers(-(2**40), 2**40)
first_timestamps = st.integers(-(2**62), 2**62)


@st.composite
def record_lists(draw: st.DrawFn) -> list[Any]:
    """One record as encode_batch takes it: ``[delta, key, value(, headers)]``."""
    rec: list[Any] = [draw(deltas), draw(keys), draw(values)]
    if draw(st.booleans()):
        rec.append(draw(headers))
    return rec


records = st.lists(record_lists(), min_size=1, max_size=12)
compressions = st.sampled_from(list(batch.Compression))


@st.composite
def batches(draw: st.DrawFn) -> tuple[bytes, list[list[Any]], dict[str, int]]:
    """``(encoded batch, its records, the keyword arguments used)``."""
    recs = draw(records)
    kwargs = {
        "first_timestamp": draw(first_timestamps),
        "producer_id": draw(st.integers(*I64)),
        "producer_epoch": draw(st.integers(*I16)),
        "base_sequence": draw(st.integers(*I32)),
    }
    raw = batch.encode_batch(recs, compression=draw(compressions), **kwargs)
    return raw, recs, kwargs


# CBOR values a meta map may hold (no floats: the protocol uses none). Integers
# are unbounded on purpose: a peer can send bignums.
_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.binary(max_size=12)
meta_keys = st.text(max_size=10) | st.integers(-(2**64), 2**64) | st.binary(max_size=6)
meta_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(meta_keys, inner, max_size=4),
    max_leaves=16,
)
metas = st.dictionaries(meta_keys, meta_values, max_size=6)

# Maps shaped like requests and responses, with every field possibly wrong.
_field_names = st.sampled_from(["api", "v", "id", "err", "msg", "data", "end", "topic"])
any_values = (
    meta_values
    | st.floats(allow_nan=True)
    | st.dictionaries(st.text(max_size=8) | st.integers(), meta_values, max_size=4)
)
protocol_maps = st.dictionaries(_field_names | meta_keys, any_values, max_size=8)
