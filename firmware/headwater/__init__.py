# Headwater device library (MicroPython). See docs/SERIAL-PROTOCOL.md.
__version__ = "0.1.0"
