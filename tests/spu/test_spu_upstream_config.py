"""The uplink's settings are checked once, where they enter, with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError
from edge.protocol.errors import InvalidConfig
from edge.protocol.wirezstd import Codec
from edge.sc.topic_settings import validate_topic_config
from edge.spu.config import UpstreamConfig

BASE = {"sc": "127.0.0.1:9003", "site": "kitchen", "token": "t"}


def test_defaults_and_sizes() -> None:
    cfg = UpstreamConfig.from_table(dict(BASE))
    assert (cfg.compression, cfg.max_bytes_per_s, cfg.tls) == (Codec.ZSTD, None, None)
    cfg = UpstreamConfig.from_table({**BASE, "max_bytes_per_s": "500KiB",
                                     "compression": "none"})
    assert (cfg.max_bytes_per_s, cfg.compression) == (500 * 1024, Codec.NONE)


@pytest.mark.parametrize(("extra", "message"), [
    ({"max_bytes_per_s": 10}, "max_bytes_per_s must be 1000"),
    ({"max_bytes_per_s": 10**12}, "max_bytes_per_s must be 1000"),
    ({"max_bytes_per_s": True}, "max_bytes_per_s must be bytes/s"),
    ({"max_bytes_per_s": "fast"}, "not a size"),
    ({"compression": "lz4"}, "compression must be one of none, zstd"),
    ({"probe_interval_s": 0}, "probe_interval_s"),
    ({"tls_cert": "/etc/hostname", "tls_key": "/etc/hostname"}, "need upstream.tls_ca"),
    ({"tls_ca": "/nonexistent/ca.pem"}, "upstream.tls_ca: '/nonexistent/ca.pem' is not a readable"),
])
def test_bad_settings_name_the_key(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UpstreamConfig.from_table({**BASE, **extra})


def test_tls_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = UpstreamConfig.from_table({**BASE, "tls_ca": str(ca)})
    assert cfg.tls is not None
    assert cfg.tls.ca == ca


@pytest.mark.parametrize("priority", [-1, 10, "9", True, 2**70])
def test_topic_priority_is_0_to_9(priority: object) -> None:
    with pytest.raises(InvalidConfig, match="upstream_priority"):
        validate_topic_config({"upstream": True, "upstream_priority": priority})
    assert validate_topic_config({"upstream_priority": 9})["upstream_priority"] == 9
