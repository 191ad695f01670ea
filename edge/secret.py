"""The cluster secret: a file the SC and every SPU of a cluster share, and the
policy of the private ports built on it (:class:`PrivateAuth`).

Without TLS client certificates it is what proves, on the private ports, that a
caller belongs to the cluster (``edge/protocol/handshake.py``); it never travels
on the wire. The file holds one line of at least 32 characters, for instance
``openssl rand -hex 32``; surrounding whitespace is ignored. Like an SSH key, a
file other users can read is refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edge.storage.fileio import TMP_SUFFIX, write_atomic

MIN_SECRET_CHARS: Final = 32
# Far above any sensible secret; bounds what a wrong path (a log, a device) reads.
MAX_SECRET_BYTES: Final = 4096
GENERATED_NAME: Final = "cluster.secret"


@dataclass(frozen=True)
class ClusterSecret:
    """A loaded secret; ``repr`` shows the path only."""

    path: Path
    value: bytes = field(repr=False)

    @classmethod
    def load(cls, path: Path) -> ClusterSecret:
        """Read and check ``path``; ValueError says what is wrong with it."""
        try:
            with path.open("rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cluster secret file {path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"cluster secret file {path} is not a regular file")
        if mode & stat.S_IRWXO:
            raise ValueError(f"cluster secret file {path} is readable by other users "
                             f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        if len(data) > MAX_SECRET_BYTES:
            raise ValueError(f"cluster secret file {path} is longer than "
                             f"{MAX_SECRET_BYTES} bytes")
        value = data.strip()
        if len(value) < MIN_SECRET_CHARS:
            raise ValueError(f"cluster secret file {path} holds {len(value)} characters; at "
                             f"least {MIN_SECRET_CHARS} are needed (openssl rand -hex 32)")
        return cls(path, value)

    @classmethod
    def ensure(cls, path: Path) -> ClusterSecret:
        """Load ``path``, creating it with a new random secret (mode 600) if it is missing:
        what ``headwater local``, ``demo`` and the test clusters do in their data dir."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (path.parent / (path.name + TMP_SUFFIX)).unlink()
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                write_atomic(path.parent, dir_fd, path.name,
                             (secrets.token_hex(32) + "\n").encode(), mode=0o600)
            finally:
                os.close(dir_fd)
        return cls.load(path)


@dataclass(frozen=True, kw_only=True)
class PrivateAuth:
    """How the private ports of a node and of its peers prove who they are."""

    secret: ClusterSecret | None = None
    # Peers present TLS client certificates that name their SPU id.
    certificates: bool = False
    # Development only: callers are bound to the id they claim, proven by nothing.
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure and self.secret is not None:
            raise ValueError("insecure_private and a cluster secret exclude each other")
        if not (self.insecure or self.secret is not None or self.certificates):
            raise ValueError(
                "private ports need authentication: set cluster_secret_file (--cluster-secret "
                "FILE), or TLS with verify_client, or insecure_private = true "
                "(--insecure-private) for development")
