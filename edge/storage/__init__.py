"""Storage: the crash-safe, segmented partition log and the consumer offset store.

Knows files, not sockets. See docs/STORAGE.md for the on-disk format.
"""

from edge.storage.config import LogConfig
from edge.storage.flush import FlushTicket
from edge.storage.log import AppendResult, PartitionLog, ReadSlice
from edge.storage.offsets import ConsumerOffsets

__all__ = [
    "AppendResult", "ConsumerOffsets", "FlushTicket", "LogConfig", "PartitionLog", "ReadSlice",
]
