"""Fields that many APIs share, with the bounds every one of them checks.

Bounds are those of the values themselves, not of what a server happens to
hold: a partition index is an i32, an offset a non-negative i64. Whether the
topic exists or the offset is in range is the handler's answer, not the schema's.
"""

from __future__ import annotations

from typing import Final

from edge.protocol.schema import Field, Kind

I32_MAX: Final = 2**31 - 1
I64_MAX: Final = 2**63 - 1
# Topic, consumer, site and group names: the name rules (edge/storage/config.py)
# allow 200 characters; the schema bounds the length, the rules the characters.
NAME_CHARS: Final = 200
# host:port, a DNS name of up to 253 characters and a port.
ADDRESS_CHARS: Final = 260
# Rows of a listing or a report: enough for every partition of a large SPU,
# and well inside the 256 KiB metadata limit.
MAX_ROWS: Final = 10_000


def name(field: str, *, required: bool = True) -> Field:
    return Field(field, Kind.TEXT, required=required, low=1, high=NAME_CHARS)


def optional(field: Field) -> Field:
    """``field``, allowed to be missing or null (its value is then None)."""
    return Field(field.name, field.kind, required=False, low=field.low, high=field.high,
                 items=field.items, choices=field.choices, row=field.row,
                 row_fields=field.row_fields, keys=field.keys, values=field.values)


# A site's token: 43 characters of URL-safe base64 today; room for longer ones.
TOKEN_CHARS: Final = 256
TOKEN: Final = Field("token", Kind.TEXT, low=1, high=TOKEN_CHARS)
TOPIC: Final = name("topic")
PARTITION: Final = Field("partition", Kind.INT, low=0, high=I32_MAX)
OFFSET: Final = Field("offset", Kind.INT, low=0, high=I64_MAX)
# SPU ids are chosen by operators (one per process on a Pi): an i32, as in the
# handshake transcript (u32) and the SC's tables.
SPU: Final = Field("spu", Kind.INT, low=0, high=I32_MAX)
# Leader epochs are issued by the SC, one more at each election: an i32 lasts.
EPOCH: Final = Field("epoch", Kind.INT, low=0, high=I32_MAX)
HW: Final = Field("hw", Kind.INT, low=0, high=I64_MAX)
LEO: Final = Field("leo", Kind.INT, low=0, high=I64_MAX)
START: Final = Field("start", Kind.INT, low=0, high=I64_MAX)
VERSION: Final = Field("version", Kind.INT, low=0, high=I64_MAX)
# Counters and figures in status answers: any i64.
COUNTERS: Final = Field("stats", Kind.MAP, items=MAX_ROWS,
                        values=Field("stats", Kind.INT))
