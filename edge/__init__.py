"""Headwater: the broker (SC, SPU), its storage, protocol and client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("headwater")  # one source: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
