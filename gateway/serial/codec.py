"""Sans-IO stream decoder: bytes from the serial line in, frame events out.

Frames end at 0x00. Anything between two delimiters that is not a valid frame
(line noise, a torn frame, a flipped bit) becomes one ``BadFrame`` event and
the decoder carries on with the next frame; it never raises. A run longer
than a frame can be is dropped as it arrives, so memory stays bounded.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from gateway.serial import cobs
from gateway.serial.errors import SerialProtocolError
from gateway.serial.frames import MAX_ENCODED, Frame, decode_frame


class FrameReceived(NamedTuple):
    frame: Frame


class BadFrame(NamedTuple):
    reason: str  # "cobs", "crc", "too_large", "short", "version", "type", "layout"
    size: int


Event = FrameReceived | BadFrame

_DELIM: Final = 0


class FrameDecoder:
    """Splits a byte stream at 0x00 and decodes each block into a frame."""

    def __init__(self, *, max_encoded: int = MAX_ENCODED) -> None:
        self._max = max_encoded
        self._buf = bytearray()
        self._oversize = 0  # bytes dropped from the current over-long block

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume ``data``; return the events of every block it completes."""
        events: list[Event] = []
        view = memoryview(data).cast("B")
        start = 0
        n = len(view)
        raw = bytes(view)
        while start < n:
            z = raw.find(_DELIM, start)
            end = n if z < 0 else z
            self._take(view[start:end])
            if z < 0:
                break
            event = self._finish()
            if event is not None:
                events.append(event)
            start = z + 1
        return events

    def _take(self, chunk: memoryview) -> None:
        if self._oversize:
            self._oversize += len(chunk)
        elif len(self._buf) + len(chunk) > self._max:
            self._oversize = len(self._buf) + len(chunk)
            self._buf.clear()
        else:
            self._buf += chunk

    def _finish(self) -> Event | None:
        if self._oversize:
            size, self._oversize = self._oversize, 0
            return BadFrame("too_large", size)
        if not self._buf:
            return None  # empty block: an idle delimiter, not an error
        block = bytes(self._buf)
        self._buf.clear()
        try:
            return FrameReceived(decode_frame(cobs.decode(block)))
        except SerialProtocolError as exc:
            return BadFrame(exc.reason, len(block))
