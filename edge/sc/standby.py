"""A standby SC's public port: it says it is a standby and where the active SC is.

With ``metadata = "etcd://..."`` several SC processes share one etcd; one is active
(edge/sc/ha.py), the others wait on its election. A standby listens on the public
port only: ``API_VERSIONS`` answers ``role = "sc-standby"`` with ``active``, the
active SC's public address (if any), and every other request ``NOT_CONTROLLER``
naming it, so that clients given several SC addresses go where the work is. Its
private port stays closed: SPUs dial the next address of their list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge.net.connection import split_addr
from edge.net.server import Connection, FrameServer, Response
from edge.protocol import messages
from edge.protocol.errors import NotController
from edge.protocol.messages import SC_STANDBY_ROLE, ApiKey
from edge.sc.config import ScConfig
from edge.tls import server_context

log = logging.getLogger(__name__)


class StandbyServer:
    """The public listener of an SC that is not active; ``active()`` names who is."""

    def __init__(self, cfg: ScConfig, active: Callable[[], str | None]) -> None:
        self.cfg = cfg
        self._active = active
        self._server: FrameServer | None = None

    async def start(self) -> None:
        ctx = server_context(self.cfg.tls) if self.cfg.tls and self.cfg.tls.cert else None
        self._server = FrameServer("SC standby", self._dispatch, ssl_context=ctx,
                                   limits=self.cfg.limits)
        await self._server.start(*split_addr(self.cfg.public_addr))
        log.info("standby SC answering on %s (the active SC: %s)", self.cfg.public_addr,
                 self._active() or "none yet")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    def _dispatch(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        active = self._active()
        if messages.api_of(meta) == ApiKey.API_VERSIONS:
            versions = {int(ApiKey.API_VERSIONS): list(messages.SUPPORTED[ApiKey.API_VERSIONS])}
            return messages.ok(meta["id"], versions=versions, role=SC_STANDBY_ROLE,
                               **({} if active is None else {"active": active})), b""
        where = f"the active SC is at {active}" if active else "no SC is active yet"
        raise NotController(f"this SC is a standby: {where}",
                            **({} if active is None else {"active": active}))
