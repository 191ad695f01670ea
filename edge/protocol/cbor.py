"""Strict CBOR decoding shared by the frame and batch codecs.

A length-delimited region (frame metadata, a batch's records) must hold exactly
one CBOR item: bytes left after it mean the sender and we disagree about the
layout, so they are an error rather than something to ignore. Duplicate map keys
are rejected too (RFC 8949 §5.6): peers would otherwise disagree on which value
counts.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2


def loads_exact(data: bytes) -> Any:
    """Decode one CBOR item that spans all of ``data``.

    Raises whatever cbor2 raises for malformed input and ValueError for trailing
    bytes; callers turn both into their own protocol error.
    """
    fp = io.BytesIO(data)
    value = cbor2.CBORDecoder(fp, allow_duplicate_keys=False).decode()
    if fp.tell() != len(data):
        raise ValueError(f"{len(data) - fp.tell()} bytes after the CBOR item")
    return value
