from headwater import cobs
from support import eq, unhex, vectors


def test_cobs_vectors():
    for v in vectors("cobs"):
        raw, enc = unhex(v["decoded"]), unhex(v["encoded"])
        out = bytearray(cobs.max_encoded(len(raw)))
        n = cobs.encode_into(bytearray(raw), len(raw), out)
        eq(bytes(out[:n]), enc)
        back = bytearray(len(raw) + 1)
        eq(cobs.decode_into(bytearray(enc), len(enc), back), len(raw))
        eq(bytes(back[: len(raw)]), raw)


def test_cobs_rejects_malformed():
    out = bytearray(16)
    eq(cobs.decode_into(bytearray(b"\x05\x01"), 2, out), -1)  # overruns
    eq(cobs.decode_into(bytearray(b"\x01\x00"), 2, out), -1)  # zero code byte
    eq(cobs.decode_into(bytearray(b"\xff" + b"\x01" * 254), 255, out), -1)  # too long for out


def test_crc_vectors():
    from binascii import crc32

    for v in vectors("crc32"):
        eq(crc32(unhex(v["data"])) & 0xFFFFFFFF, v["crc"])
