"""Serial bridge: MicroPython devices on UARTs -> Headwater topics.

``codec``/``frames``/``session`` are pure (sans-IO); ``bridge`` does the I/O.
"""

from gateway.serial.bridge import BridgeTiming, SerialBridge, SerialPortConfig
from gateway.serial.errors import SerialProtocolError
from gateway.serial.session import LinkTiming

__all__ = ["BridgeTiming", "LinkTiming", "SerialBridge", "SerialPortConfig", "SerialProtocolError"]
