# ruff: noqa: UP031, RET503 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
# Helpers for the MicroPython tests: vectors, a fake UART, a fake clock.
import gc
import json
import os

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
VECTORS = os.getenv("HW_VECTORS") or (_here + "/../../vectors/serial.json")


def vectors(section):
    # HW_VECTORS_DIR holds serial.json split by section (the driver writes it):
    # the whole file parsed at once takes ~40 KB of a 64 KB heap.
    split = os.getenv("HW_VECTORS_DIR")
    if split:
        with open(split + "/" + section + ".json") as f:
            out = json.load(f)
        gc.collect()
        return out
    with open(VECTORS) as f:
        d = json.load(f)
    out = d[section]
    d = None
    gc.collect()
    return out


def frame_vector(name):
    for v in vectors("frames"):
        if v["name"] == name:
            return v
    raise KeyError(name)


def unhex(s):
    return bytes.fromhex(s)


def untag(v):
    for kind in v:
        x = v[kind]
        if kind == "bytes":
            return bytes.fromhex(x)
        if kind == "null":
            return None
        if kind == "array":
            return [untag(i) for i in x]
        if kind == "map":
            d = {}
            for k, val in x:
                d[untag(k)] = untag(val)
            return d
        return x


class FakeUart:
    def __init__(self):
        self.tx = bytearray()
        self.rx = bytearray()

    def write(self, buf):
        self.tx.extend(buf)
        return len(buf)

    def readinto(self, buf):
        n = min(len(buf), len(self.rx))
        if n == 0:
            return None
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def take(self):
        out = bytes(self.tx)
        self.tx = bytearray()
        return out


def check(cond, msg=""):
    if not cond:
        raise AssertionError(msg)


def eq(a, b):
    if a != b:
        raise AssertionError("%r != %r" % (a, b))
