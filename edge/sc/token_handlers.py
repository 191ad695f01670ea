"""The SC's token APIs: make, list and revoke tokens; LOGIN with one.

The SC stores each token's SHA-256, never the token; a new token is in the
TOKEN_CREATE answer only. Every change is pushed to the SPUs with the next
assignment (``tokens`` of REGISTER_SPU's stream), see edge/tokens.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge.acl import principal_name
from edge.net.server import Connection, Response
from edge.protocol import messages, sc_api
from edge.protocol.errors import InvalidRequest
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_request
from edge.sc.controller import Controller
from edge.sc.store import TokenRow
from edge.storage.mirror import token_digest
from edge.tokens import TokenBook, new_token

log = logging.getLogger(__name__)

Handler = Callable[[Connection, dict[Any, Any], bytes], Response | Awaitable[Response]]


class TokenHandlers:
    """Tokens on top of the SC's store; ``book`` is what LOGIN checks."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.book = TokenBook(self._grants())

    def table(self) -> dict[ApiKey, Handler]:
        return {
            ApiKey.LOGIN: self.login,
            ApiKey.TOKEN_CREATE: self.create,
            ApiKey.TOKEN_LIST: self.list_tokens,
            ApiKey.TOKEN_REVOKE: self.revoke,
        }

    def _grants(self) -> list[tuple[str, str]]:
        return [(t.sha256, t.principal) for t in self.controller.store.tokens()
                if t.revoked_ms is None]

    def wire_grants(self) -> list[dict[str, str]]:
        """The live tokens as the assignment push carries them to the SPUs."""
        return [{"sha256": d, "principal": p} for d, p in self.book.grants()]

    def _changed(self) -> None:
        self.book.update(self._grants())
        self.controller.changed()  # pushed to every SPU with its assignment

    def login(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.LOGIN, meta)
        return messages.ok(meta["id"], principal=self.book.login(conn, req.token)), b""

    def create(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.TOKEN_CREATE, meta)
        try:
            principal = principal_name(req.kind, req.name)
        except ValueError as exc:
            raise InvalidRequest(str(exc), field="name") from None
        token = new_token()
        row = TokenRow(token_digest(token), req.name, req.kind, principal,
                       int(time.time() * 1000), None)
        self.controller.store.add_token(row)
        log.info("token %s made for %s", row.sha256[:sc_api.TOKEN_ID_CHARS], principal)
        self._changed()
        return messages.ok(meta["id"], name=req.name, principal=principal,
                           token_id=row.sha256[:sc_api.TOKEN_ID_CHARS], token=token), b""

    def list_tokens(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        rows = [{"name": t.name, "kind": t.kind, "principal": t.principal,
                 "token_id": t.sha256[:sc_api.TOKEN_ID_CHARS], "created_ms": t.created_ms,
                 "revoked_ms": t.revoked_ms} for t in self.controller.store.tokens()]
        return messages.ok(meta["id"], tokens=rows), b""

    def revoke(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.TOKEN_REVOKE, meta)
        count = self.controller.store.revoke_tokens(req.name, req.token_id or "",
                                                    int(time.time() * 1000))
        if count == 0:
            which = f"with id {req.token_id}" if req.token_id else "that is live"
            raise InvalidRequest(f"{req.name} has no live token {which} (see headwater "
                                 "token list)", field="token_id" if req.token_id else "name")
        log.info("%d token(s) of %s revoked", count, req.name)
        self._changed()
        return messages.ok(meta["id"]), b""
