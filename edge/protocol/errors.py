"""Errors: one base class, wire error codes, and the table between them.

Every error says whether retrying the same request can succeed (``retriable``)
and carries data (offsets, limits) rather than only a message. Errors that
arrive from a peer are *remote*; errors found while decoding what a peer sent
are *local* protocol errors.
"""

# The class names are the public API and follow the wire error codes
# (NotLeader for NOT_LEADER), so the "Error" suffix rule does not apply.
# ruff: noqa: N818

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar, Final


class ErrorCode(IntEnum):
    """Error codes carried in response metadata (``e`` field)."""

    NONE = 0
    UNKNOWN = 1
    CORRUPT_MESSAGE = 2
    UNSUPPORTED_VERSION = 3
    UNKNOWN_API = 4
    INVALID_REQUEST = 5
    MESSAGE_TOO_LARGE = 6
    TOPIC_NOT_FOUND = 10
    TOPIC_EXISTS = 11
    PARTITION_NOT_FOUND = 12
    NOT_LEADER = 13
    LEADER_NOT_AVAILABLE = 14
    OFFSET_OUT_OF_RANGE = 15
    INVALID_CONFIG = 16
    INSUFFICIENT_RESOURCES = 17
    OUT_OF_ORDER_SEQUENCE = 20
    INVALID_PRODUCER_EPOCH = 21
    STORAGE_ERROR = 30
    DISK_FULL = 31
    BUDGET_EXCEEDED = 32
    TIMEOUT = 40
    SHUTTING_DOWN = 41
    NOT_CONTROLLER = 42
    SPU_NOT_FOUND = 43
    NOT_ENOUGH_REPLICAS = 44
    STALE_EPOCH = 45
    NOT_CONTIGUOUS = 46
    MIRROR_SOURCE_MISMATCH = 47
    CONSUMER_NOT_FOUND = 50
    SITE_NOT_FOUND = 51
    SITE_EXISTS = 52
    AUTHENTICATION_FAILED = 60
    AUTHORIZATION_FAILED = 61
    UNKNOWN_MEMBER = 70
    STALE_GENERATION = 71
    GROUP_NOT_EMPTY = 72


class HeadwaterError(Exception):
    """Base of every error this package raises on purpose."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN
    retriable: ClassVar[bool] = False

    # ``message`` is positional-only so that any name can be a data field,
    # including ones that arrive from a peer (see messages.check_response).
    def __init__(self, message: str = "", /, **data: Any) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.data = data

    def __str__(self) -> str:
        return self.message


class ProtocolError(HeadwaterError):
    """Bytes from a peer could not be decoded (a local protocol error)."""

    code = ErrorCode.CORRUPT_MESSAGE


class FrameTooLarge(ProtocolError):
    """A frame or its metadata is longer than the configured limit."""

    code = ErrorCode.MESSAGE_TOO_LARGE


class CorruptBatch(ProtocolError):
    """A record batch failed its length or CRC check."""


class RemoteError(HeadwaterError):
    """The peer answered with an error code."""


class UnknownError(RemoteError):
    code = ErrorCode.UNKNOWN


class UnsupportedVersion(RemoteError):
    code = ErrorCode.UNSUPPORTED_VERSION


class UnknownApi(RemoteError):
    code = ErrorCode.UNKNOWN_API


class InvalidRequest(RemoteError):
    code = ErrorCode.INVALID_REQUEST


class MessageTooLarge(RemoteError):
    code = ErrorCode.MESSAGE_TOO_LARGE


class CorruptMessage(RemoteError):
    code = ErrorCode.CORRUPT_MESSAGE


class TopicNotFound(RemoteError):
    code = ErrorCode.TOPIC_NOT_FOUND


class TopicExists(RemoteError):
    code = ErrorCode.TOPIC_EXISTS


class PartitionNotFound(RemoteError):
    code = ErrorCode.PARTITION_NOT_FOUND
    retriable = True  # replica assignment may not have reached the SPU yet


class NotLeader(RemoteError):
    code = ErrorCode.NOT_LEADER
    retriable = True


class LeaderNotAvailable(RemoteError):
    code = ErrorCode.LEADER_NOT_AVAILABLE
    retriable = True


class OffsetOutOfRange(RemoteError):
    code = ErrorCode.OFFSET_OUT_OF_RANGE


class InvalidConfig(RemoteError):
    code = ErrorCode.INVALID_CONFIG


class InsufficientResources(RemoteError):
    code = ErrorCode.INSUFFICIENT_RESOURCES
    retriable = True


class OutOfOrderSequence(RemoteError):
    code = ErrorCode.OUT_OF_ORDER_SEQUENCE


class InvalidProducerEpoch(RemoteError):
    code = ErrorCode.INVALID_PRODUCER_EPOCH


class StorageError(RemoteError):
    code = ErrorCode.STORAGE_ERROR


class DiskFull(RemoteError):
    code = ErrorCode.DISK_FULL
    retriable = True


class BudgetExceeded(RemoteError):
    """The node's or topic's disk budget is full and the topic's policy (reject-new)
    keeps what the cloud does not have yet; retry once the uplink delivered it."""

    code = ErrorCode.BUDGET_EXCEEDED
    retriable = True


class RequestTimeout(RemoteError):
    code = ErrorCode.TIMEOUT
    retriable = True


class ShuttingDown(RemoteError):
    code = ErrorCode.SHUTTING_DOWN
    retriable = True


class NotController(RemoteError):
    code = ErrorCode.NOT_CONTROLLER
    retriable = True


class SpuNotFound(RemoteError):
    code = ErrorCode.SPU_NOT_FOUND


class NotEnoughReplicas(RemoteError):
    code = ErrorCode.NOT_ENOUGH_REPLICAS
    retriable = True


class StaleEpoch(RemoteError):
    code = ErrorCode.STALE_EPOCH
    retriable = True


class NotContiguous(RemoteError):
    """A mirrored batch does not continue the cloud partition; carries
    ``log_end_offset``, where the uplink resumes."""

    code = ErrorCode.NOT_CONTIGUOUS
    retriable = True


class MirrorSourceMismatch(RemoteError):
    """The edge log a site mirrors is not the one its cloud partition holds
    (the edge topic was re-created or wiped): an operator decides what happens."""

    code = ErrorCode.MIRROR_SOURCE_MISMATCH


class ConsumerNotFound(RemoteError):
    code = ErrorCode.CONSUMER_NOT_FOUND


class SiteNotFound(RemoteError):
    code = ErrorCode.SITE_NOT_FOUND


class SiteExists(RemoteError):
    code = ErrorCode.SITE_EXISTS


class AuthenticationFailed(RemoteError):
    code = ErrorCode.AUTHENTICATION_FAILED


class AuthorizationFailed(RemoteError):
    """The caller is known but no ACL allows it this operation on this resource
    (``data``: principal, operation, resource)."""

    code = ErrorCode.AUTHORIZATION_FAILED


class UnknownMember(RemoteError):
    """The consumer-group member is not (any longer) in its group: its session
    expired or it left. It joins again as a new member."""

    code = ErrorCode.UNKNOWN_MEMBER


class StaleGeneration(RemoteError):
    """A group member acted on a generation that is not the one it holds
    partitions at (a rebalance moved them); carries ``generation``, the current one."""

    code = ErrorCode.STALE_GENERATION


class GroupNotEmpty(RemoteError):
    """The consumer group has live members; carries ``group`` and ``members``."""

    code = ErrorCode.GROUP_NOT_EMPTY


class DeliveryUnknown(HeadwaterError):
    """A produced batch may or may not be in the log (its answer was lost, or a
    retry met a sequence error after an earlier attempt may have been stored).
    Re-sending can create a duplicate; read the log to find out."""

    retriable = False


class ConnectionLost(HeadwaterError):
    """The connection closed before the response arrived."""

    retriable = True


_BY_CODE: dict[int, type[RemoteError]] = {
    cls.code: cls
    for cls in (
        UnknownError, UnsupportedVersion, UnknownApi, InvalidRequest, MessageTooLarge,
        CorruptMessage, TopicNotFound, TopicExists, PartitionNotFound, NotLeader,
        LeaderNotAvailable, OffsetOutOfRange, InvalidConfig, InsufficientResources,
        OutOfOrderSequence, InvalidProducerEpoch, StorageError, DiskFull, BudgetExceeded,
        RequestTimeout,
        ShuttingDown, NotController, SpuNotFound, NotEnoughReplicas, StaleEpoch,
        NotContiguous, MirrorSourceMismatch, ConsumerNotFound, SiteNotFound, SiteExists,
        AuthenticationFailed, AuthorizationFailed, UnknownMember, StaleGeneration,
        GroupNotEmpty,
    )
}


# Codes are small; a peer may still send any CBOR integer, and formatting one
# with thousands of digits raises ValueError (int max str digits).
_SHOWN_CODE_LIMIT: Final = 2**63


def error_for(code: int, message: str = "", /, **data: Any) -> RemoteError:
    """The exception for a wire error code (unknown codes map to UnknownError)."""
    cls = _BY_CODE.get(code, UnknownError)
    if not message:
        shown = code if -_SHOWN_CODE_LIMIT <= code < _SHOWN_CODE_LIMIT else "out of range"
        message = f"{cls.__name__} (code {shown})"
    return cls(message, **data)


def code_of(exc: BaseException) -> ErrorCode:
    """The wire code to send back for an exception raised while serving a request."""
    if isinstance(exc, HeadwaterError):
        return exc.code
    return ErrorCode.UNKNOWN
