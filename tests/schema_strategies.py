"""Hypothesis strategies drawn from the API schemas themselves: requests that
satisfy an API's declared fields, and requests that break exactly one of them.

Valid values stay small (a topic with 2**31 partitions is valid and would take
the test's SPU all day); each violation names the field it breaks, so a test can
check that the error names it too.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from edge.protocol.schema import Field, Kind, Message

# Valid integers: the low end of the range, where handlers do real work.
SMALL_SPAN = 5
_TEXT = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1,
                max_size=12)


def _int(field: Field) -> st.SearchStrategy[int]:
    low = field.low if field.low is not None else -(2**63)
    high = field.high if field.high is not None else 2**63 - 1
    low = max(low, -SMALL_SPAN) if low < 0 <= high else low
    return st.integers(low, min(high, low + SMALL_SPAN))


def _text(field: Field) -> st.SearchStrategy[str]:
    if field.choices is not None:
        return st.sampled_from(field.choices)
    low, high = field.low or 0, field.high if field.high is not None else 40
    return st.text(alphabet=string.ascii_lowercase + string.digits + "-.:",
                   min_size=low, max_size=min(high, max(low, 12)))


def value(field: Field) -> st.SearchStrategy[Any]:
    """A value ``field`` accepts."""
    kind = field.kind
    if kind is Kind.INT:
        return _int(field)
    if kind is Kind.TEXT:
        return _text(field)
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.FLOAT:
        return st.floats(0, 1e6, allow_nan=False)
    if kind is Kind.BYTES:
        low = field.low or 0
        return st.binary(min_size=low, max_size=field.high if field.high is not None else 32)
    if kind is Kind.INTS:
        return st.lists(_int(field), max_size=min(field.items or 4, 4))
    if kind is Kind.TEXTS:
        return st.lists(_text(field), max_size=min(field.items or 4, 4))
    if kind is Kind.MAP:
        keys = _int(Field("k", Kind.INT, low=0, high=10)) if field.keys is Kind.INT else _TEXT
        values = value(field.values) if field.values is not None else st.integers(0, 100)
        return st.dictionaries(keys, values, max_size=3)
    if kind is Kind.TUPLES:
        return st.lists(st.tuples(*(value(f) for f in field.row_fields)).map(list),
                        max_size=3)
    if field.row is None:  # free rows
        return st.lists(st.dictionaries(_TEXT, st.integers(0, 100), max_size=3), max_size=3)
    return st.lists(fields_of(field.row_fields), max_size=3)


@st.composite
def fields_of(draw: st.DrawFn, declared: tuple[Field, ...]) -> dict[str, Any]:
    """Every required field, and each optional one or not."""
    out: dict[str, Any] = {}
    for field in declared:
        if field.required or draw(st.booleans()):
            out[field.name] = draw(value(field))
    return out


def valid(message: Message[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return fields_of(message.fields)


def _wrong_type(field: Field) -> list[Any]:
    others = {Kind.INT: ["7", 1.5, True, [1]], Kind.TEXT: [7, b"x", ["a"]],
              Kind.BOOL: [1, "true"], Kind.FLOAT: ["1.0", [1.0]], Kind.BYTES: ["xx", 3]}
    return others.get(field.kind, [{"not": "an array"}] if field.kind is not Kind.MAP
                      else [["not", "a", "map"]])


def _out_of_bounds(field: Field) -> list[Any]:
    bad: list[Any] = []
    if field.kind is Kind.INT:
        if field.high is not None:
            bad += [field.high + 1, 10**40]
        if field.low is not None:
            bad += [field.low - 1, -(10**40)]
        if field.high is None and field.low is None:
            bad += [2**64, -(2**64)]
    elif field.kind is Kind.TEXT:
        if field.choices is not None:
            bad.append("not-one-of-the-choices")
        elif field.high is not None:
            bad.append("x" * (field.high + 1))
        if (field.low or 0) >= 1 and field.choices is None:
            bad.append("")
    elif field.kind is Kind.BYTES and field.high is not None:
        bad.append(b"x" * (field.high + 1))
    elif field.kind is Kind.INTS and field.high is not None:
        bad.append([field.high + 1])
    return bad


@st.composite
def violating(draw: st.DrawFn, message: Message[Any]) -> tuple[str, dict[str, Any]]:
    """``(field name, request)``: a valid request with one field broken (missing when
    required, of the wrong type, or outside its bounds)."""
    fields = draw(valid(message))
    field = draw(st.sampled_from(message.fields))
    choices: list[Any] = _wrong_type(field) + _out_of_bounds(field)
    if field.required:
        choices.append(_MISSING)
    broken = draw(st.sampled_from(choices))
    if broken is _MISSING:
        fields.pop(field.name, None)
    else:
        fields[field.name] = broken
    return field.name, fields


_MISSING = object()
