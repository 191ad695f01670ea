"""Which failures a producer reports as definite and which as DeliveryUnknown."""

from __future__ import annotations

from edge.client.producer import _Batch, _outcome
from edge.protocol.errors import (
    DeliveryUnknown,
    InvalidRequest,
    NotEnoughReplicas,
    OutOfOrderSequence,
    RequestTimeout,
)


def _batch(attempts: int) -> _Batch:
    b = _Batch("t", 0, 0)
    b.sequence, b.attempts = 7, attempts
    return b


async def test_sequence_error_on_a_retry_is_unknown() -> None:
    err = _outcome(_batch(2), OutOfOrderSequence("gap"))
    assert isinstance(err, DeliveryUnknown)
    assert not err.retriable
    assert err.data["sequence"] == 7
    assert err.data["topic"] == "t"


async def test_sequence_error_on_the_first_attempt_is_definite() -> None:
    exc = OutOfOrderSequence("gap")
    assert _outcome(_batch(1), exc) is exc


async def test_lost_answer_after_sending_is_unknown() -> None:
    assert isinstance(_outcome(_batch(3), RequestTimeout("slow")), DeliveryUnknown)


async def test_refusals_stay_definite() -> None:
    for exc in (InvalidRequest("bad"), NotEnoughReplicas("isr")):
        assert _outcome(_batch(2), exc) is exc
