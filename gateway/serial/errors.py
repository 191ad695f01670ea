"""The one error class the serial codec raises."""

from __future__ import annotations

from edge.protocol.errors import ProtocolError


class SerialProtocolError(ProtocolError):
    """Bytes from a serial device could not be decoded into a frame.

    ``reason`` is a short stable token (``"cobs"``, ``"crc"``, ``"too_large"``,
    ``"short"``, ``"version"``, ``"type"``, ``"layout"``) used as a counter label.
    """

    def __init__(self, message: str, *, reason: str, **data: object) -> None:
        super().__init__(message, reason=reason, **data)
        self.reason = reason
