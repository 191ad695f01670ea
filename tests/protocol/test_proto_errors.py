"""Error codes, classes, retriable flags, and their trip through a response frame."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.protocol import errors, messages
from edge.protocol.errors import ErrorCode, HeadwaterError, RemoteError, error_for
from edge.protocol.framing import FrameDecoder, encode_frame

# The full table, pinned: a change here is a change for every client.
TABLE: dict[ErrorCode, tuple[type[RemoteError], bool]] = {
    ErrorCode.UNKNOWN: (errors.UnknownError, False),
    ErrorCode.CORRUPT_MESSAGE: (errors.CorruptMessage, False),
    ErrorCode.UNSUPPORTED_VERSION: (errors.UnsupportedVersion, False),
    ErrorCode.UNKNOWN_API: (errors.UnknownApi, False),
    ErrorCode.INVALID_REQUEST: (errors.InvalidRequest, False),
    ErrorCode.MESSAGE_TOO_LARGE: (errors.MessageTooLarge, False),
    ErrorCode.TOPIC_NOT_FOUND: (errors.TopicNotFound, False),
    ErrorCode.TOPIC_EXISTS: (errors.TopicExists, False),
    ErrorCode.PARTITION_NOT_FOUND: (errors.PartitionNotFound, True),
    ErrorCode.NOT_LEADER: (errors.NotLeader, True),
    ErrorCode.LEADER_NOT_AVAILABLE: (errors.LeaderNotAvailable, True),
    ErrorCode.OFFSET_OUT_OF_RANGE: (errors.OffsetOutOfRange, False),
    ErrorCode.INVALID_CONFIG: (errors.InvalidConfig, False),
    ErrorCode.INSUFFICIENT_RESOURCES: (errors.InsufficientResources, True),
    ErrorCode.OUT_OF_ORDER_SEQUENCE: (errors.OutOfOrderSequence, False),
    ErrorCode.INVALID_PRODUCER_EPOCH: (errors.InvalidProducerEpoch, False),
    ErrorCode.STORAGE_ERROR: (errors.StorageError, False),
    ErrorCode.DISK_FULL: (errors.DiskFull, True),
    ErrorCode.BUDGET_EXCEEDED: (errors.BudgetExceeded, True),
    ErrorCode.TIMEOUT: (errors.RequestTimeout, True),
    ErrorCode.SHUTTING_DOWN: (errors.ShuttingDown, True),
    ErrorCode.NOT_CONTROLLER: (errors.NotController, True),
    ErrorCode.SPU_NOT_FOUND: (errors.SpuNotFound, False),
    ErrorCode.NOT_ENOUGH_REPLICAS: (errors.NotEnoughReplicas, True),
    ErrorCode.STALE_EPOCH: (errors.StaleEpoch, True),
    ErrorCode.NOT_CONTIGUOUS: (errors.NotContiguous, True),
    ErrorCode.MIRROR_SOURCE_MISMATCH: (errors.MirrorSourceMismatch, False),
    ErrorCode.CONSUMER_NOT_FOUND: (errors.ConsumerNotFound, False),
    ErrorCode.SITE_NOT_FOUND: (errors.SiteNotFound, False),
    ErrorCode.SITE_EXISTS: (errors.SiteExists, False),
    ErrorCode.AUTHENTICATION_FAILED: (errors.AuthenticationFailed, False),
    ErrorCode.AUTHORIZATION_FAILED: (errors.AuthorizationFailed, False),
    ErrorCode.UNKNOWN_MEMBER: (errors.UnknownMember, False),
    ErrorCode.STALE_GENERATION: (errors.StaleGeneration, False),
    ErrorCode.GROUP_NOT_EMPTY: (errors.GroupNotEmpty, False),
}
CODES = [c for c in ErrorCode if c is not ErrorCode.NONE]


def test_table_covers_every_code_but_none() -> None:
    assert set(TABLE) == set(CODES)
    assert ErrorCode.NONE == 0


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
def test_error_for_maps_code_to_its_class(code: ErrorCode) -> None:
    exc = error_for(code)
    cls, retriable = TABLE[code]
    assert type(exc) is cls
    assert exc.code is code
    assert exc.retriable is retriable
    assert isinstance(exc, RemoteError)
    assert errors.code_of(exc) is code
    assert str(exc) == f"{cls.__name__} (code {int(code)})"


def test_named_retriable_flags() -> None:
    assert errors.NotLeader.retriable
    assert errors.LeaderNotAvailable.retriable
    assert errors.RequestTimeout.retriable
    assert not errors.TopicNotFound.retriable
    assert not errors.CorruptMessage.retriable


@pytest.mark.parametrize(
    "code",
    [-1, 7, 99, 2**31, -(2**70), 2**20000],
    ids=["-1", "7", "99", "2^31", "-2^70", "2^20000"],  # pytest would str() the bignum
)
def test_unknown_codes_map_to_unknown_error(code: int) -> None:
    exc = error_for(code)
    assert type(exc) is errors.UnknownError
    assert "UnknownError (code" in str(exc)


def test_local_errors_and_their_wire_codes() -> None:
    assert errors.code_of(errors.ProtocolError()) is ErrorCode.CORRUPT_MESSAGE
    assert errors.code_of(errors.CorruptBatch()) is ErrorCode.CORRUPT_MESSAGE
    assert errors.code_of(errors.FrameTooLarge()) is ErrorCode.MESSAGE_TOO_LARGE
    assert errors.code_of(errors.ConnectionLost()) is ErrorCode.UNKNOWN
    assert errors.code_of(ValueError("x")) is ErrorCode.UNKNOWN
    assert errors.ConnectionLost.retriable
    assert not errors.ProtocolError.retriable
    for cls in (errors.FrameTooLarge, errors.CorruptBatch):
        assert issubclass(cls, errors.ProtocolError)
    assert not issubclass(errors.ProtocolError, RemoteError)


def test_error_carries_message_and_data() -> None:
    exc = errors.OffsetOutOfRange("offset 9 past end", offset=9, end=5)
    assert str(exc) == exc.message == "offset 9 past end"
    assert exc.data == {"offset": 9, "end": 5}
    assert str(errors.NotLeader()) == "NotLeader"
    # Any name can be a data field, including the constructor's own parameter names.
    assert errors.NotLeader("m", message="x", code=3).data == {"message": "x", "code": 3}


def _through_a_frame(meta: dict[str, Any]) -> dict[Any, Any]:
    dec = FrameDecoder()
    dec.feed(encode_frame(meta))
    [frame] = dec.frames()
    return frame.meta


data_values = st.none() | st.integers() | st.text(max_size=20) | st.booleans()
data_maps = st.dictionaries(
    st.sampled_from(["message", "code", "offset", "leader", "limit"]) | st.text(max_size=8),
    data_values,
    max_size=5,
)
raisable = st.sampled_from(
    [cls for cls, _ in TABLE.values()]
    + [errors.ProtocolError, errors.FrameTooLarge, errors.CorruptBatch, errors.ConnectionLost]
)


@settings(max_examples=150, deadline=None)
@given(raisable, st.text(max_size=40), data_maps, st.integers(0, 2**31 - 1))
def test_error_response_round_trip(
    cls: type[HeadwaterError], message: str, data: dict[str, Any], corr: int
) -> None:
    exc = cls(message, **data)
    meta = _through_a_frame(messages.error_response(corr, exc))
    assert meta["id"] == corr
    assert meta["err"] == exc.code
    with pytest.raises(RemoteError) as info:
        messages.check_response(meta)
    got = info.value
    assert type(got) is TABLE[exc.code][0]
    if isinstance(exc, RemoteError):
        assert type(got) is type(exc)
    assert str(got) == str(exc)
    assert got.data == data


def test_error_response_keeps_only_plain_data() -> None:
    exc = errors.NotLeader("moved", leader=3, epoch=None, name="spu-1", addr=("h", 1), raw=b"x")
    meta = messages.error_response(5, exc)
    assert meta == {
        "id": 5,
        "err": 13,
        "msg": "moved",
        "data": {"leader": 3, "epoch": None, "name": "spu-1"},
    }


def test_error_response_for_a_foreign_exception() -> None:
    meta = messages.error_response(1, KeyError("boom"))
    assert (meta["err"], "data" in meta) == (ErrorCode.UNKNOWN, False)
    with pytest.raises(errors.UnknownError):
        messages.check_response(meta)
