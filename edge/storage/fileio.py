"""Small file-system primitives the storage layer builds on.

They exist so that every write is complete, every replacement atomic and every
directory change durable: ``os.write`` may write less than asked on a full
disk, a rename is only durable once its directory is fsynced, and a partition
directory must never be written by two processes at once.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import suppress
from pathlib import Path
from typing import Final

from edge.protocol.errors import StorageError

TMP_SUFFIX: Final = ".tmp"

Buffer = bytes | bytearray | memoryview


def write_all(fd: int, parts: list[Buffer]) -> None:
    """Write every byte of ``parts`` in order (retrying short writes)."""
    views = [memoryview(p) for p in parts]
    while views:
        n = os.writev(fd, views)
        if n == 0:
            raise OSError("write made no progress")
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def write_atomic(directory: Path, dir_fd: int, name: str, data: bytes, *,
                 mode: int = 0o644) -> None:
    """Replace ``directory/name`` so that a crash leaves the old or the new file, whole.

    Write a temporary file, fsync it, rename it over the old one, fsync the directory.
    """
    tmp = directory / (name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, [data])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)
    os.fsync(dir_fd)


class DirLock:
    """A directory's descriptor holding an exclusive ``flock``; fsync it after changes.

    Two processes appending to one partition would corrupt it (think of two SPU
    units on one Pi pointed at the same data directory). The kernel drops the
    lock when the process dies, and ``close`` or garbage collection drop it too.
    """

    __slots__ = ("fd",)

    def __init__(self, directory: Path) -> None:
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise StorageError(
                f"{directory} is in use by another log", path=str(directory)
            ) from None

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with suppress(OSError):
            self.close()
