# ruff: noqa: UP031 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
from headwater import cbor
from support import eq, unhex, untag, vectors


def test_cbor_vectors_encode_and_decode():
    for v in vectors("cbor"):
        value = untag(v["value"])
        eq(cbor.dumps(value).hex(), v["hex"])
        eq(cbor.loads(unhex(v["hex"])), value)


def test_cbor_invalid_vectors_raise_value_error():
    for v in vectors("cbor_invalid"):
        try:
            cbor.loads(unhex(v["hex"]))
        except ValueError:
            continue
        raise AssertionError("accepted " + v["name"])


def test_cbor_refuses_nan_inf_and_unknown_types():
    for bad in (float("nan"), float("inf"), -float("inf"), object()):
        try:
            cbor.dumps(bad)
        except ValueError:
            continue
        raise AssertionError("encoded %r" % (bad,))


def test_cbor_round_trip_reading():
    reading = {"t": 21.5, "h": 40, "ok": True, "raw": b"\x00\x01", "tags": ["a", None]}
    eq(cbor.loads(cbor.dumps(reading)), reading)


def test_cbor_depth_is_bounded():
    v = []
    for _ in range(40):
        v = [v]
    try:
        cbor.dumps(v)
    except ValueError:
        pass
    else:
        raise AssertionError("deep value encoded")
    try:
        cbor.loads(b"\x81" * 40 + b"\x80")
    except ValueError:
        return
    raise AssertionError("deep value decoded")
