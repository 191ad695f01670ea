"""Any bytes, any map → a result or a HeadwaterError: the fuzz target under Hypothesis.

fuzz_decoders.fuzz_one is the same target atheris runs; here Hypothesis drives it
with random bytes and with mutations of valid frames and batches, which get past
the prefix and CRC checks that random bytes almost never pass.
"""

from __future__ import annotations

from typing import Any

from fuzz_decoders import check_meta, fuzz_one, seal, seed_inputs
from hypothesis import example, given, settings
from hypothesis import strategies as st
from protocol_strategies import batches, metas, protocol_maps

from edge.protocol.framing import encode_frame

FUZZ = settings(max_examples=250, deadline=None)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Overwrite, insert or delete a few bytes of ``seed``."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        buf = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(buf)))
            kind = draw(st.sampled_from(["set", "insert", "delete"]))
            byte = draw(st.integers(0, 255))
            if kind == "insert":
                buf.insert(pos, byte)
            elif pos < len(buf):
                if kind == "set":
                    buf[pos] = byte
                else:
                    del buf[pos]
        return bytes(buf)

    return mutate()


valid_inputs = st.one_of(
    st.sampled_from(seed_inputs()),
    batches().map(lambda case: case[0]),
    st.tuples(metas, batches()).map(lambda t: encode_frame(t[0], t[1][0])),
)


@FUZZ
@given(st.binary(max_size=600))
@example(b"")
@example(b"\x00\x00\x00\x04\x00\x00\x00\x00")  # frame with empty meta
@example(b"\xc2\x59\x40\x00" + b"\xff" * 0x4000)  # a bignum where a map is expected
def test_random_bytes(data: bytes) -> None:
    fuzz_one(data)


@FUZZ
@given(valid_inputs.flatmap(_mutations))
def test_mutated_valid_inputs(data: bytes) -> None:
    fuzz_one(data)


@FUZZ
@given(valid_inputs.flatmap(_mutations))
def test_mutated_then_resealed_batches(data: bytes) -> None:
    # Mutated past the CRC: the header and record checks must still hold.
    if len(data) >= 61:
        fuzz_one(seal(data))


@FUZZ
@given(protocol_maps)
@example({"api": 2**20000, "v": 2**20000, "err": 2**20000, "msg": 2**20000})
@example({"err": 13, "data": {1: 2, "message": "m", "code": 5}})
@example({"err": float("nan")})
def test_messages_on_any_map(meta: dict[Any, Any]) -> None:
    check_meta(meta)


@settings(max_examples=100, deadline=None)
@given(metas)
def test_any_meta_through_every_decoder(meta: dict[Any, Any]) -> None:
    fuzz_one(encode_frame(meta))
