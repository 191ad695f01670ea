"""One ConfigError and one TlsConfig for daemons and gateway: every mistake names its key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.config import ConfigError
from edge.protocol.errors import HeadwaterError
from edge.sc.config import ScConfig
from edge.spu.config import UpstreamConfig
from edge.tls import TlsConfig
from gateway.config import parse_config

GATEWAY = 'sc = "127.0.0.1:9003"\n[mqtt]\n[[mqtt.rules]]\nfilter = "a/+"\ntopic = "t"\n'


def test_the_key_is_kept_and_placed_under_its_table() -> None:
    err = ConfigError("must be above 0 (got 0)", key="in_flight")
    assert str(err) == "in_flight: must be above 0 (got 0)"
    assert (err.key, err.problem) == ("in_flight", "must be above 0 (got 0)")
    assert str(err.under("mqtt")) == "mqtt.in_flight: must be above 0 (got 0)"
    assert err.under("") is err
    assert str(ConfigError("nothing to run").under("mqtt")) == "mqtt: nothing to run"
    # Callers that validate input catch ValueError; the CLI also knows it as ours.
    assert isinstance(err, ValueError)
    assert isinstance(err, HeadwaterError)
    assert not err.retriable


def test_tls_errors_name_the_field(tmp_path: Path) -> None:
    cert = tmp_path / "node.crt"
    cert.write_text("x")
    cases = [
        ({"cert": cert}, "key", "cert and key must be given together"),
        ({"key": cert}, "cert", "cert and key must be given together"),
        ({"cert": cert, "key": cert, "verify_client": True}, "verify_client", "needs ca"),
        ({"ca": tmp_path / "missing.pem"}, "ca", "is not a readable file"),
        ({"ca": cert, "server_name": ""}, "server_name", "must not be empty"),
    ]
    for kwargs, key, problem in cases:
        with pytest.raises(ConfigError, match=problem) as info:
            TlsConfig(**kwargs)  # type: ignore[arg-type]
        assert info.value.key == key
    assert TlsConfig(ca=cert, server_name="sc.example").server_name == "sc.example"


def test_each_config_file_names_the_tls_key_as_written(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"^tls\.ca: .* is not a readable file"):
        ScConfig.from_dict({"data_dir": str(tmp_path), "insecure_private": True,
                            "tls": {"ca": str(missing)}})
    with pytest.raises(ConfigError, match=r"^upstream\.tls_ca: .* is not a readable file"):
        UpstreamConfig.from_table({"sc": "127.0.0.1:9003", "site": "s", "token": "t",
                                   "tls_ca": str(missing)})
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(GATEWAY.replace(
            "[mqtt]", f'[mqtt]\ntls = {{ ca = "{missing}" }}')))
    assert info.value.key == "mqtt.tls.ca"
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(GATEWAY + '[tls]\nverify_client = true\n'))
    assert (info.value.key, info.value.problem) == ("tls.verify_client", "unknown key")


def test_discovery_errors_keep_their_key_in_the_gateway() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads('site = "Not A Site"\n' + GATEWAY))
    assert info.value.key == "site"
    assert str(info.value).startswith("site: ")
