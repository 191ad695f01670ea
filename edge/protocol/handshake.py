"""The private-port handshake: who is calling, proven without sending the secret.

SC and SPU private ports (SPU -> SC registration and heartbeats, SPU -> SPU
replication) open every connection with three frames, before anything else is
served (API_VERSIONS excepted, so that ``headwater ping`` still answers):

1. server -> client, unprompted, correlation id 0: the *hello*
   ``{"id": 0, "err": 0, "hello": 1, "role": "sc"|"spu", "nonce": 32 bytes,
   "secret": bool, "cert": bool}`` — a fresh random nonce, and what the server
   demands: a proof of the cluster secret, a certificate naming the SPU.
2. client -> server: ``AUTHENTICATE`` with the SPU id it claims, its role, its
   own fresh nonce and, with a secret, ``mac = HMAC-SHA256(secret, client
   transcript)``.
3. server -> client: success with ``mac = HMAC-SHA256(secret, server
   transcript)``, so that an SPU never follows an SC or leader that does not
   hold the secret; or ``AUTHENTICATION_FAILED`` and a closed connection.

Both transcripts cover both nonces, both roles and the claimed id; they differ
in their label, so the server's answer can never be replayed as a client's.
A recorded exchange is useless on a new connection: the server's nonce is new.

Transcript layout (all fixed width or length-prefixed, so no two inputs encode
alike)::

    label          27 bytes  b"headwater-private-v1 client" | b"...-v1 server"
    server role     1 + n    u8 length, ASCII
    client role     1 + n    u8 length, ASCII
    server nonce   32
    client nonce   32
    spu id          4        u32, big-endian

Pure: no sockets, no event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import Any, Final, NamedTuple, TypeGuard

from edge.protocol import fields
from edge.protocol.errors import AuthenticationFailed
from edge.protocol.schema import Field, Kind, Message, decode_with

NONCE_BYTES: Final = 32
MAC_BYTES: Final = 32
HELLO_VERSION: Final = 1
ROLES: Final = ("sc", "spu")
CLIENT_LABEL: Final = b"headwater-private-v1 client"
SERVER_LABEL: Final = b"headwater-private-v1 server"
_SPU_ID: Final = struct.Struct(">I")


class Hello(NamedTuple):
    """What a private port says first."""

    role: str
    nonce: bytes
    secret: bool
    cert: bool


class Claim(NamedTuple):
    """Who an AUTHENTICATE request says it is."""

    spu: int
    role: str
    nonce: bytes
    mac: bytes | None


class AuthAnswer(NamedTuple):
    """The server's proof of the secret (None when it has none)."""

    mac: bytes | None


CLAIM: Final = Message(Claim, (
    fields.SPU,
    Field("role", Kind.TEXT, choices=ROLES),
    Field("nonce", Kind.BYTES, low=NONCE_BYTES, high=NONCE_BYTES),
    Field("mac", Kind.BYTES, required=False, low=MAC_BYTES, high=MAC_BYTES),
))
AUTH_ANSWER: Final = Message(AuthAnswer, (
    Field("mac", Kind.BYTES, required=False, low=MAC_BYTES, high=MAC_BYTES),
))


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def hello_meta(hello: Hello) -> dict[str, Any]:
    return {"id": 0, "err": 0, "hello": HELLO_VERSION, "role": hello.role,
            "nonce": hello.nonce, "secret": hello.secret, "cert": hello.cert}


def parse_hello(meta: dict[Any, Any]) -> Hello:
    """The server's hello, checked; anything else is not a private port."""
    if meta.get("hello") != HELLO_VERSION or meta.get("id") != 0:
        raise AuthenticationFailed("the peer sent no private-port hello (not a private "
                                   "port, or an incompatible version)")
    role, nonce = meta.get("role"), meta.get("nonce")
    secret, cert = meta.get("secret"), meta.get("cert")
    if role not in ROLES or not _is_nonce(nonce) or not isinstance(secret, bool) \
            or not isinstance(cert, bool):
        raise AuthenticationFailed("malformed private-port hello")
    return Hello(str(role), bytes(nonce), secret, cert)


def claim_fields(claim: Claim) -> dict[str, Any]:
    fields: dict[str, Any] = {"spu": claim.spu, "role": claim.role, "nonce": claim.nonce}
    if claim.mac is not None:
        fields["mac"] = claim.mac
    return fields


def parse_claim(meta: dict[Any, Any]) -> Claim:
    """An AUTHENTICATE request's fields, bounds included; a bad one fails the handshake."""
    return decode_with(Claim, CLAIM.fields, meta, AuthenticationFailed)


def parse_answer(meta: dict[Any, Any]) -> AuthAnswer:
    """The server's AUTHENTICATE answer, checked like a claim."""
    return decode_with(AuthAnswer, AUTH_ANSWER.fields, meta, AuthenticationFailed)


def client_mac(secret: bytes, hello: Hello, claim: Claim) -> bytes:
    """The client's proof of the secret for this connection."""
    return _mac(secret, CLIENT_LABEL, hello, claim)


def server_mac(secret: bytes, hello: Hello, claim: Claim) -> bytes:
    """The server's proof of the secret, over the same transcript."""
    return _mac(secret, SERVER_LABEL, hello, claim)


def check_mac(expected: bytes, got: bytes | None) -> bool:
    return got is not None and hmac.compare_digest(expected, got)


def _mac(secret: bytes, label: bytes, hello: Hello, claim: Claim) -> bytes:
    transcript = b"".join((
        label, _text(hello.role), _text(claim.role), hello.nonce, claim.nonce,
        _SPU_ID.pack(claim.spu),
    ))
    return hmac.new(secret, transcript, hashlib.sha256).digest()


def _text(value: str) -> bytes:
    data = value.encode("ascii")
    return bytes([len(data)]) + data


def _is_nonce(value: object) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and len(value) == NONCE_BYTES
