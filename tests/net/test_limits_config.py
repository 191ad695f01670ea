"""The ``[limits]`` table: defaults, bounds checked where the value enters, and the
pool arithmetic the listeners rely on."""

from __future__ import annotations

import pytest

from edge.config import ConfigError
from edge.net.limits import FREE_SHARE_BYTES, BufferPool, ServerLimits, charge_of, limits_from
from edge.net.server import read_room
from edge.sc.config import ScConfig
from edge.spu.config import SpuConfig


def test_a_config_without_limits_gets_the_defaults() -> None:
    cfg = SpuConfig.from_dict({"id": 1, "data_dir": "/tmp/x", "insecure_private": True})
    assert cfg.limits == ServerLimits()
    assert cfg.limits.max_connections == 64


def test_limits_are_read_from_both_daemons_configs() -> None:
    raw = {"data_dir": "/tmp/x", "insecure_private": True,
           "limits": {"max_connections": 10, "idle_timeout_s": 5}}
    assert ScConfig.from_dict(raw).limits.max_connections == 10
    assert SpuConfig.from_dict({**raw, "id": 2}).limits.idle_timeout_s == 5.0


@pytest.mark.parametrize(("table", "message"), [
    ({"max_connections": 0}, "limits.max_connections must be in 1..65536"),
    ({"max_connections": 10**30}, "limits.max_connections must be in 1..65536"),
    ({"max_in_flight": 4, "max_long_polls": 8}, "max_long_polls must not exceed"),
    ({"idle_timeout_s": 0}, "limits.idle_timeout_s must be in"),
    ({"frame_timeout_s": 1e9}, "limits.frame_timeout_s must be in"),
    ({"max_buffered_bytes": "16MiB"}, "max_buffered_bytes must be int"),
    ({"max_conections": 5}, "unknown key(s) in limits: max_conections"),
])
def test_bad_limits_are_refused_naming_the_key(table: dict[str, object], message: str
                                               ) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        limits_from({"limits": table})


def test_a_connection_reads_its_free_share_even_when_the_pool_is_spent() -> None:
    assert read_room(0, pool_room=-(1 << 20)) == FREE_SHARE_BYTES
    assert read_room(FREE_SHARE_BYTES, pool_room=0) == 0
    assert read_room(FREE_SHARE_BYTES, pool_room=4096) == 4096
    assert charge_of(FREE_SHARE_BYTES + 10) == 10
    assert charge_of(100) == 0


def test_the_pool_counts_charges_and_frees() -> None:
    pool = BufferPool(1000)
    pool.charge(0, 600)
    assert not pool.fits(500)
    pool.charge(600, 100)
    assert pool.fits(900)
    assert pool.used == 100
