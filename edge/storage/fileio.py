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
    """A partition directory's descriptor, for fsyncs after changes; with
    ``exclusive`` (the default) it holds an exclusive ``flock`` for its lifetime.

    Two processes appending to one partition would corrupt it (think of two SPU
    units on one Pi pointed at the same data directory). The kernel drops the
    lock when the process dies, and ``close`` or garbage collection drop it too.
    A caller that locks the whole data directory (the SPU, :class:`DaemonLock`)
    opens its partitions without ``exclusive``: their descriptor is then opened
    when a fsync needs it, and ``release`` closes it while the partition is idle.
    """

    __slots__ = ("_fd", "directory", "exclusive")

    def __init__(self, directory: Path, *, exclusive: bool = True) -> None:
        self.directory = directory
        self.exclusive = exclusive
        self._fd = -1
        if not exclusive:
            return
        fd = _open_dir(directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"{directory} is in use by another log", path=str(directory)
            ) from None
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            self._fd = _open_dir(self.directory)
        return self._fd

    def fsync(self) -> None:
        os.fsync(self.fd)

    def release(self) -> bool:
        """Close the descriptor unless it holds the lock; whether one was closed."""
        if self.exclusive or self._fd < 0:
            return False
        self.close()
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with suppress(OSError):
            self.close()


def _open_dir(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class DaemonLock:
    """The exclusive ``flock`` of a lock file in a daemon's data directory, with the
    holder's PID written in it. Two SCs on one database would each elect leaders and
    push assignments of their own; two SPUs on one directory would write the same
    logs. The kernel drops the lock when the process dies."""

    def __init__(self, data_dir: Path, file_name: str, owner: str) -> None:
        path = data_dir / file_name
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_holder(self.fd)
            self.close()
            held = f" (PID {pid})" if pid is not None else ""
            raise StorageError(f"{data_dir} is in use by a running {owner}{held}: stop it "
                               "first, or give this one another data_dir", path=str(data_dir),
                               pid=pid) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        """Release the lock (the file stays: removing it could race a new holder)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with suppress(OSError):
            self.close()


def _lock_holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
