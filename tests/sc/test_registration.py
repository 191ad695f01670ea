"""REGISTER_SPU input checks."""

from __future__ import annotations

import pytest

from edge.protocol import sc_api
from edge.protocol.errors import InvalidRequest
from edge.protocol.schema import decode_request
from edge.sc.registration import check_address

GOOD = {"spu": 0, "public": "127.0.0.1:9005", "private": "127.0.0.1:9006"}


@pytest.mark.parametrize("spu_id", [-1, 2**31, 2**63, True, "1"])
def test_out_of_range_ids_are_refused(spu_id: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_request(sc_api.REGISTER_SPU, {**GOOD, "spu": spu_id})
    assert info.value.data["field"] == "spu"


@pytest.mark.parametrize(("field", "value", "named"), [
    ("public", "h" * 300, "public"), ("private", "", "private"), ("rack", 7, "rack"),
    ("partitions", {"t": 0}, "partitions"),
    # A row's field is named as it is in the row.
    ("partitions", [{"topic": "t", "partition": 0}], "leader"),
])
def test_malformed_registrations_name_the_field(field: str, value: object, named: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_request(sc_api.REGISTER_SPU, {**GOOD, field: value})
    assert info.value.data["field"] == named


@pytest.mark.parametrize("addr", ["\0\0\0\0\0", "../../etc", "host:0", "host:65536", "h:x",
                                  ":9005", "-bad:1"])
def test_bad_addresses_are_refused(addr: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_address("private", addr)
    assert info.value.data["field"] == "private"


@pytest.mark.parametrize("addr", ["127.0.0.1:9006", "pi-barn-1.local:9006", "[::1]:9006"])
def test_good_addresses_pass(addr: str) -> None:
    check_address("public", addr)
    assert decode_request(sc_api.REGISTER_SPU, GOOD).spu == 0
