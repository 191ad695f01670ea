"""The private-port handshake: transcript bytes as documented, and every field checked."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from edge.protocol import handshake
from edge.protocol.errors import AuthenticationFailed
from edge.protocol.handshake import Claim, Hello

SECRET = b"0123456789abcdef0123456789abcdef"
HELLO = Hello("sc", bytes(range(32)), secret=True, cert=False)
CLAIM = Claim(3, "spu", bytes(range(32, 64)), None)


def transcript(label: bytes) -> bytes:
    # Written out from the layout in docs/PROTOCOL.md, not from the code.
    return (label + b"\x02sc" + b"\x03spu" + bytes(range(32)) + bytes(range(32, 64))
            + b"\x00\x00\x00\x03")


def test_macs_cover_the_documented_transcript() -> None:
    client = hmac.new(SECRET, transcript(b"headwater-private-v1 client"), hashlib.sha256)
    server = hmac.new(SECRET, transcript(b"headwater-private-v1 server"), hashlib.sha256)
    assert handshake.client_mac(SECRET, HELLO, CLAIM) == client.digest()
    assert handshake.server_mac(SECRET, HELLO, CLAIM) == server.digest()
    assert client.digest() != server.digest()


@pytest.mark.parametrize("change", [
    {"spu": 4}, {"nonce": bytes(32)}, {"role": "sc"},
])
def test_a_mac_is_bound_to_id_nonce_and_role(change: dict[str, object]) -> None:
    good = handshake.client_mac(SECRET, HELLO, CLAIM)
    assert handshake.client_mac(SECRET, HELLO, CLAIM._replace(**change)) != good
    assert handshake.client_mac(SECRET, HELLO._replace(nonce=bytes(32)), CLAIM) != good
    assert handshake.client_mac(SECRET[:-1] + b"X", HELLO, CLAIM) != good
    assert not handshake.check_mac(good, None)


def test_hello_and_claim_round_trip() -> None:
    assert handshake.parse_hello(handshake.hello_meta(HELLO)) == HELLO
    claim = CLAIM._replace(mac=b"m" * 32)
    assert handshake.parse_claim(handshake.claim_fields(claim)) == claim
    assert "mac" not in handshake.claim_fields(CLAIM)


@pytest.mark.parametrize("fields", [
    {"spu": -1}, {"spu": 2**31}, {"spu": True}, {"spu": "3"}, {"spu": 10**5000},
    {"role": "client"}, {"role": None}, {"nonce": b"short"}, {"nonce": "x" * 32},
    {"mac": b"m" * 31}, {"mac": "m" * 32},
])
def test_a_malformed_claim_is_refused_naming_the_field(fields: dict[str, object]) -> None:
    meta = {**handshake.claim_fields(CLAIM), **fields}
    with pytest.raises(AuthenticationFailed) as info:
        handshake.parse_claim(meta)
    assert info.value.data["field"] == next(iter(fields))


@pytest.mark.parametrize("meta", [
    {"id": 1, "err": 0}, {"id": 0, "err": 0, "hello": 2},
    {**handshake.hello_meta(HELLO), "nonce": b"x"},
    {**handshake.hello_meta(HELLO), "role": "gateway"},
    {**handshake.hello_meta(HELLO), "secret": 1},
])
def test_anything_but_a_hello_is_not_a_private_port(meta: dict[str, object]) -> None:
    with pytest.raises(AuthenticationFailed):
        handshake.parse_hello(meta)
