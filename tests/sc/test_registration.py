"""REGISTER_SPU input checks."""

from __future__ import annotations

import pytest

from edge.protocol.errors import InvalidRequest
from edge.sc.registration import check_address, check_spu_id


@pytest.mark.parametrize("spu_id", [-1, 2**31, 2**63])
def test_out_of_range_ids_are_refused(spu_id: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_spu_id(spu_id)
    assert info.value.data["field"] == "spu"


@pytest.mark.parametrize("addr", ["\0\0\0\0\0", "../../etc", "host:0", "host:65536", "h:x",
                                  ":9005", "-bad:1"])
def test_bad_addresses_are_refused(addr: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_address("private", addr)
    assert info.value.data["field"] == "private"


@pytest.mark.parametrize("addr", ["127.0.0.1:9006", "pi-barn-1.local:9006", "[::1]:9006"])
def test_good_addresses_pass(addr: str) -> None:
    check_address("public", addr)
    check_spu_id(0)
