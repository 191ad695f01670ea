"""Who is calling a private port: the gate on the server, the answer on the dialer.

The SC's and SPUs' private ports serve nothing but API_VERSIONS until the caller
has passed the handshake of ``edge/protocol/handshake.py``. The SPU id it proves
is bound to the connection: REGISTER_SPU, HEARTBEAT, UPDATE_ISR and
REPLICA_FETCH for any other id are refused (:func:`require_spu`). A caller proves
its id with the cluster secret, or with a TLS client certificate naming it
(``spu-N``), or both when both are configured. A refusal answers
``AUTHENTICATION_FAILED``, is counted, logged once per peer host, and closes the
connection.

Without TLS the handshake proves who opened the connection, not who sends each
later frame: an attacker on the path could take over an authenticated TCP
connection. Where that matters, private ports run TLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final

from edge.net.server import Connection, Dispatch, Response
from edge.protocol import handshake, messages
from edge.protocol.errors import AuthenticationFailed
from edge.protocol.handshake import Claim, Hello
from edge.protocol.messages import ApiKey
from edge.secret import PrivateAuth
from edge.tls import spu_ids_named

if TYPE_CHECKING:
    from edge.net.connection import Authenticator, ClientConnection, Frame

log = logging.getLogger(__name__)

# A caller that has not authenticated by then is dropped: a private port is no
# place to park idle sockets.
AUTH_TIMEOUT_S: Final = 10.0
CLIENT_ROLE: Final = "spu"


class PrivateGate:
    """Authenticates every connection of one private listener."""

    def __init__(self, auth: PrivateAuth, *, role: str) -> None:
        self.auth = auth
        self.role = role
        self.failures = 0
        self._hellos: dict[Connection, Hello] = {}
        # Refused, closing once the refusal is out: what they still send is dropped.
        self._refused: set[Connection] = set()

    def greet(self, conn: Connection) -> None:
        """Send the hello and give the caller AUTH_TIMEOUT_S to answer it."""
        hello = Hello(self.role, handshake.new_nonce(), self.auth.secret is not None,
                      self.auth.certificates)
        self._hellos[conn] = hello

        def forget() -> None:
            self._hellos.pop(conn, None)
            self._refused.discard(conn)

        conn.on_close.append(forget)
        conn.send_soon(handshake.hello_meta(hello))
        conn.spawn(self._deadline(conn), "auth-deadline")

    def wrap(self, inner: Dispatch) -> Dispatch:
        """``inner`` behind the gate: it sees only authenticated connections."""

        def dispatch(conn: Connection, meta: dict[Any, Any], blob: bytes
                     ) -> Response | Awaitable[Response]:
            if conn.closed or conn in self._refused:
                return None
            try:
                if conn.spu_id is None:
                    return self._admit(conn, meta, blob, inner)
                if meta.get("api") == ApiKey.AUTHENTICATE:
                    raise AuthenticationFailed("AUTHENTICATE repeated on one connection")  # noqa: TRY301
                return inner(conn, meta, blob)
            except AuthenticationFailed as exc:
                self.refuse(conn, meta, exc)
                return None

        return dispatch

    def _admit(self, conn: Connection, meta: dict[Any, Any], blob: bytes, inner: Dispatch
               ) -> Response | Awaitable[Response]:
        api = messages.api_of(meta)
        if api == ApiKey.API_VERSIONS:
            return inner(conn, meta, blob)
        if api != ApiKey.AUTHENTICATE:
            raise AuthenticationFailed(f"{api.name} before AUTHENTICATE")
        hello = self._hellos.pop(conn, None)
        if hello is None:
            raise AuthenticationFailed("one AUTHENTICATE per connection")
        claim = handshake.parse_claim(meta)
        self._verify(conn, hello, claim)
        conn.spu_id = claim.spu
        log.debug("%s: %s authenticated as SPU %d", conn.server.name, conn.peer, claim.spu)
        secret = self.auth.secret
        proof = {} if secret is None else {"mac": handshake.server_mac(secret.value, hello,
                                                                        claim)}
        return messages.ok(meta["id"], **proof), b""

    def _verify(self, conn: Connection, hello: Hello, claim: Claim) -> None:
        if claim.role != CLIENT_ROLE:
            raise AuthenticationFailed(f"role: {claim.role!r} may not call this port")
        secret = self.auth.secret
        if secret is not None and not handshake.check_mac(
                handshake.client_mac(secret.value, hello, claim), claim.mac):
            raise AuthenticationFailed(f"SPU {claim.spu}: wrong proof of the cluster secret",
                                       spu=claim.spu)
        cert = conn.writer.get_extra_info("peercert")
        if self.auth.certificates or cert:
            named = spu_ids_named(cert)
            if claim.spu not in named:
                shown = ", ".join(f"spu-{i}" for i in sorted(named)) or "no SPU"
                raise AuthenticationFailed(f"SPU {claim.spu}: the TLS certificate names "
                                           f"{shown}", spu=claim.spu)

    def refuse(self, conn: Connection, meta: dict[Any, Any], exc: AuthenticationFailed
               ) -> None:
        """Answer AUTHENTICATION_FAILED, count and log it, and close the connection."""
        self.failures += 1
        self._refused.add(conn)
        conn.server.stats.log_once(conn.peer, "authentication failure", str(exc))
        raw_id = meta.get("id")
        cid = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else -1
        conn.spawn(conn.close_after(messages.error_response(cid, exc)), "auth-refused")

    async def _deadline(self, conn: Connection) -> None:
        await asyncio.sleep(AUTH_TIMEOUT_S)
        if conn.spu_id is None and not conn.closed:
            self.failures += 1
            conn.server.stats.log_once(conn.peer, "authentication failure",
                                       f"no AUTHENTICATE within {AUTH_TIMEOUT_S:g}s")
            conn.abort()


def dialer(auth: PrivateAuth, spu_id: int) -> Authenticator:
    """What an SPU gives the connections it opens to private ports."""

    async def run(conn: ClientConnection, hello: Awaitable[Frame]) -> None:
        await authenticate(conn, hello, auth=auth, spu_id=spu_id)

    return run


def require_spu(conn: Connection, spu_id: int, field: str) -> None:
    """Refuse a request for an SPU other than the one the connection authenticated as."""
    if conn.spu_id is None:
        raise AuthenticationFailed(f"{field}: this connection is not authenticated",
                                   field=field)
    if conn.spu_id != spu_id:
        raise AuthenticationFailed(
            f"{field}: this connection authenticated as SPU {conn.spu_id}, not "
            f"{messages.shown(spu_id)}", field=field, spu=conn.spu_id)


async def authenticate(conn: ClientConnection, hello_frame: Awaitable[Frame], *,
                       auth: PrivateAuth, spu_id: int) -> None:
    """The dialer's side: answer the hello as ``spu_id`` and check the server's proof."""
    meta, _ = await hello_frame
    hello = handshake.parse_hello(meta)
    secret = auth.secret
    if hello.secret and secret is None:
        raise AuthenticationFailed(f"{conn.addr} requires the cluster secret "
                                   "(cluster_secret_file)")
    if secret is not None and not hello.secret:
        # A node of this cluster would ask for it: never follow one that does not.
        raise AuthenticationFailed(f"{conn.addr} does not ask for the cluster secret: it is "
                                   "not a node of this cluster")
    claim = Claim(spu_id, CLIENT_ROLE, handshake.new_nonce(), None)
    if secret is not None:
        claim = claim._replace(mac=handshake.client_mac(secret.value, hello, claim))
    answer, _ = await conn.request(ApiKey.AUTHENTICATE, timeout=AUTH_TIMEOUT_S,
                                   **handshake.claim_fields(claim))
    if secret is not None:
        got = handshake.parse_answer(answer).mac
        if not handshake.check_mac(handshake.server_mac(secret.value, hello, claim), got):
            raise AuthenticationFailed(f"{conn.addr} failed to prove the cluster secret")
