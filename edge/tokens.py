"""Tokens: principals for callers that carry no client certificate.

Where mutual TLS is impractical (a gateway on a shared broker host, a script on a
laptop), ``headwater token create NAME`` makes a token: 256 random bits, shown
once. The SC stores only its SHA-256 and pushes the digests of the live tokens to
every SPU with its assignment, so SPUs answer ``LOGIN`` themselves while the SC is
away. A ``LOGIN`` request (the first on a public connection) binds the connection
to the token's principal (``NAME`` for a user, ``gateway-NAME`` for a gateway,
see edge/acl.py); every later request checks that the token is still live, so
``headwater token revoke`` stops connections already open at their next request,
on the SC at once and on each SPU with the next push.

A token is a bearer secret: without TLS anyone on the path can read it. The SC
warns when tokens exist and its public port has no TLS.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from edge.logstate import LogOnce
from edge.net.server import Connection
from edge.protocol.errors import AuthenticationFailed
from edge.protocol.sc_api import MAX_TOKEN_CHARS
from edge.storage.mirror import token_digest

log = logging.getLogger(__name__)

# Recognizable in a leaked file or a log line (secret scanners match on it).
PREFIX: Final = "hwt_"
TOKEN_BYTES: Final = 32
_TOKEN_TEXT: Final = re.compile(r"[\x21-\x7e]+")
MAX_LOGGED_PEERS: Final = 256


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def check_token(text: str, where: str) -> str:
    """``text`` without surrounding whitespace if it can be a token, else ValueError
    naming ``where`` it came from: checked where it enters, not refused later."""
    token = text.strip()
    if not 0 < len(token) <= MAX_TOKEN_CHARS or not _TOKEN_TEXT.fullmatch(token):
        raise ValueError(f"{where}: not a token (1..{MAX_TOKEN_CHARS} visible ASCII "
                         "characters, as `headwater token create` prints)")
    return token


def read_token_file(path: Path) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {path}: cannot read it ({exc})") from None
    return check_token(text, f"token file {path}")


class TokenBook:
    """The live tokens one server accepts, by digest, and the LOGIN check."""

    def __init__(self, grants: Iterable[tuple[str, str]] = ()) -> None:
        self._principals: dict[str, str] = dict(grants)
        self.failures = 0
        self._log = LogOnce(log, max_keys=MAX_LOGGED_PEERS)

    def update(self, grants: Iterable[tuple[str, str]]) -> bool:
        """Replace the live tokens with ``(sha256, principal)`` pairs; True if changed."""
        new = dict(grants)
        changed = new != self._principals
        self._principals = new
        return changed

    def grants(self) -> list[tuple[str, str]]:
        return sorted(self._principals.items())

    def login(self, conn: Connection, token: str) -> str:
        """Bind ``conn`` to the principal of ``token``; AuthenticationFailed if it is
        unknown or revoked, or names someone else than the connection's certificate."""
        if conn.login is not None:
            raise self._refuse(conn, "LOGIN repeated on one connection")
        digest = token_digest(token)
        principal = self._principals.get(digest)
        if principal is None:
            raise self._refuse(conn, "unknown or revoked token (make one with: headwater "
                               "token create NAME)")
        certified = conn.principal
        if certified is not None and certified != principal:
            raise self._refuse(conn, f"the token stands for {principal} but the client "
                               f"certificate for {certified}: one connection, one principal")
        conn.login = (digest, principal)
        return principal

    def check(self, conn: Connection) -> None:
        """AuthenticationFailed if ``conn`` logged in with a token since revoked."""
        if conn.login is not None and conn.login[0] not in self._principals:
            raise self._refuse(conn, f"the token of {conn.login[1]} was revoked")

    def _refuse(self, conn: Connection, why: str) -> AuthenticationFailed:
        self.failures += 1
        self._log.warning(conn.peer_host, "token refused from %s: %s; further refusals "
                          "from this host are counted, not logged", conn.peer_host, why)
        return AuthenticationFailed(why)
