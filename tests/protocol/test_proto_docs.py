"""docs/PROTOCOL.md is read by people writing other clients: its tables must match the code."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from test_proto_vectors import BATCH_HEX, FRAME_HEX, LAYOUT

from edge.protocol import batch, errors, framing, messages
from edge.protocol.apis import SCHEMAS
from edge.protocol.schema import Field

DOC = Path(__file__).parents[2] / "docs" / "PROTOCOL.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def table(doc: str, heading: str) -> list[list[str]]:
    """Body rows of the first table after ``heading``, as lists of cell texts."""
    start = doc.index(f"\n{heading}\n")
    rows: list[list[str]] = []
    for line in doc[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # skip the header row and the |---| row


def test_batch_layout_table(doc: str) -> None:
    rows = table(doc, "## Record batch")
    fields = [(int(r[0]), r[2]) for r in rows[:-1]]
    offsets = [off for off, _, _ in LAYOUT]
    assert fields == list(zip(offsets, batch.BatchHeader._fields, strict=True))
    for (_, fmt, _), row in zip(LAYOUT, rows, strict=False):
        assert int(row[1]) == struct.calcsize(fmt)
        assert row[3][0] == ("u" if fmt[-1].isupper() else "i")
        assert int(row[3][1:]) == 8 * struct.calcsize(fmt)
    assert rows[-1][:3] == [str(batch.HEADER_SIZE), "batch_length - 49", "records"]
    assert batch.HEADER_SIZE - batch.LOG_OVERHEAD == 49


def test_frame_layout_table(doc: str) -> None:
    rows = table(doc, "## Framing")
    assert [r[:3] for r in rows[:2]] == [["0", "4", "length"], ["4", "4", "meta_length"]]
    assert framing.PREFIX.format == ">II"


def test_api_key_table(doc: str) -> None:
    rows = table(doc, "## API keys")
    assert [(int(r[0]), r[1]) for r in rows] == [(int(k), k.name) for k in messages.ApiKey]
    for row in rows:
        low, high = messages.SUPPORTED[messages.ApiKey[row[1]]]
        assert row[3] == f"{low}..{high}"


def test_error_code_table(doc: str) -> None:
    rows = table(doc, "## Error codes")
    assert [(int(r[0]), r[1]) for r in rows] == [(int(c), c.name) for c in errors.ErrorCode]
    for code, name, cls_name, retriable in rows[1:]:
        exc = errors.error_for(int(code))
        assert type(exc).__name__ == cls_name, name
        assert {"yes": True, "no": False}[retriable] is exc.retriable, name


def test_limits_table(doc: str) -> None:
    rows = table(doc, "## Limits")
    values = {
        "MAX_FRAME_BYTES": framing.MAX_FRAME_BYTES,
        "MAX_META_BYTES": framing.MAX_META_BYTES,
        "MAX_RESPONSE_META_BYTES": framing.MAX_RESPONSE_META_BYTES,
        "MAX_BATCH_BYTES": batch.MAX_BATCH_BYTES,
        "MAX_RECORDS_BYTES": batch.MAX_RECORDS_BYTES,
    }
    assert {r[0]: int(r[2]) for r in rows} == values


def test_every_api_has_a_fields_section(doc: str) -> None:
    fields = doc[doc.index("\n## API fields\n") : doc.index("\n## Test vectors\n")]
    headings = re.findall(r"^### (\w+)$", fields, flags=re.MULTILINE)
    assert headings == [k.name for k in messages.ApiKey]


def _hex_block(doc: str, after: str) -> str:
    block = doc[doc.index(after) :].split("```")[1]
    # Each line: hex bytes (single spaces allowed), two or more spaces, a comment.
    lines = block.strip().splitlines()
    return "".join(re.split(r"\s{2,}", line.strip())[0].replace(" ", "") for line in lines)


def test_vectors_in_doc_match_tests(doc: str) -> None:
    assert _hex_block(doc, "**Frame**") == FRAME_HEX
    assert _hex_block(doc, "**Batch**") == BATCH_HEX


def _api_section(doc: str, name: str) -> str:
    start = doc.index(f"\n### {name}\n")
    ends = [i for i in (doc.find("\n### ", start + 1), doc.find("\n## ", start + 1)) if i > 0]
    return doc[start:min(ends)]


def _documented(section: str, part: str) -> list[list[str]] | None:
    """The ``Request:``/``Response:`` table of a section; None for "no fields"."""
    if f"\n{part}: no fields." in section:
        return None
    return table(section, f"{part}:")


def _required_ok(field: Field, cell: str, is_request: bool) -> bool:
    """``yes`` for a required field; ``no`` (with the default, for a request field
    that has one) for an optional field; the rest of the cell may say when."""
    if field.required:
        return cell == "yes"
    if is_request and field.default is not None:
        return cell == f"no, {json.dumps(field.default)}"
    return cell == "no" or cell.startswith(("no,", "no ("))


def test_every_api_has_a_schema() -> None:
    assert sorted(SCHEMAS) == sorted(messages.ApiKey)


@pytest.mark.parametrize("api", list(messages.ApiKey), ids=lambda k: k.name)
def test_api_tables_match_their_schemas(doc: str, api: messages.ApiKey) -> None:
    section = _api_section(doc, api.name)
    assert f"Key {int(api)}." in section
    schema = SCHEMAS[api]
    parts = (("Request", schema.request),
             ("Pushes" if schema.stream else "Response", schema.response))
    for part, message in parts:
        rows = _documented(section, part)
        if not message.fields:
            assert rows is None, f"{api.name} {part}: the doc lists fields"
            continue
        assert rows is not None, f"{api.name} {part}: the doc says no fields"
        assert [r[0] for r in rows] == [f.name for f in message.fields], f"{api.name} {part}"
        assert [r[1] for r in rows] == [f.kind.value for f in message.fields], api.name
        for field, row in zip(message.fields, rows, strict=True):
            assert _required_ok(field, row[2], part == "Request"), (api.name, part, row)
