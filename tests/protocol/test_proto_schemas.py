"""Every API's schema, request and response: what it declares valid decodes, and
one broken field is one error naming that field (never a crash, never a pass)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schema_strategies import valid, violating

from edge.protocol.apis import SCHEMAS
from edge.protocol.errors import AuthenticationFailed, InvalidRequest, ProtocolError
from edge.protocol.schema import Message, decode_request, decode_response

MESSAGES = [(f"{key.name}-{part}", message)
            for key, api in SCHEMAS.items()
            for part, message in (("request", api.request), ("response", api.response))
            if message.fields]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_messages_were_collected() -> None:
    assert len(MESSAGES) > 40


@pytest.mark.parametrize(("name", "message"), MESSAGES, ids=[n for n, _ in MESSAGES])
@FAST
@given(data=st.data())
def test_valid_fields_decode(name: str, message: Message[Any], data: st.DataObject) -> None:
    fields = data.draw(valid(message))
    decoded = decode_request(message, fields)
    assert decoded._fields == tuple(f.name for f in message.fields)
    for field in message.fields:
        if field.name in fields and field.kind.name in ("INT", "TEXT", "BOOL", "BYTES"):
            assert getattr(decoded, field.name) == fields[field.name]


@pytest.mark.parametrize(("name", "message"), MESSAGES, ids=[n for n, _ in MESSAGES])
@FAST
@given(data=st.data())
def test_one_broken_field_is_one_error_naming_it(name: str, message: Message[Any],
                                                  data: st.DataObject) -> None:
    field, fields = data.draw(violating(message))
    with pytest.raises((InvalidRequest, AuthenticationFailed)) as request_error:
        decode_request(message, fields)
    assert request_error.value.data["field"] == field
    assert repr(field) in str(request_error.value)
    with pytest.raises(ProtocolError) as response_error:
        decode_response(message, fields)
    assert response_error.value.data["field"] == field
