"""TXT hints, mdns addresses and discovery settings: pure checks, no network."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import ConfigError
from edge.discovery.config import DiscoveryConfig, check_sc_address
from edge.discovery.spec import MdnsSpec, parse_sc
from edge.discovery.txt import Announcement, InvalidAnnouncementError, Role
from edge.sc.config import ScConfig
from edge.spu.config import SpuConfig

SPU = Announcement(role=Role.SPU, site="kitchen", cluster="c0ffee", node_id=2,
                   public_port=9005, private_port=9006, tls=True, version="0.1.0", gen=7,
                   addresses=("198.18.0.2", "fd00::2"))


def _wire(ann: Announcement) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in ann.to_txt().items()}


def test_round_trip_and_instance_name() -> None:
    assert Announcement.from_txt(_wire(SPU)) == SPU
    assert SPU.instance == "kitchen-spu-2"
    sc = Announcement(role=Role.SC, site="kitchen", public_port=9003, private_port=9004,
                      cluster="10febbc442784a1c")
    assert sc.instance == "kitchen-sc-10febbc4"
    assert Announcement.from_txt(_wire(sc)) == sc
    assert SPU.bumped().gen == 8


def test_txt_stays_small() -> None:
    # One DNS packet carries the whole answer; each TXT string is at most 255 bytes.
    big = Announcement(role=Role.GATEWAY, site="s" * 40, cluster="c" * 64, node_id=2**31 - 1,
                       public_port=65535, private_port=65535, version="v" * 32, gen=2**32 - 1)
    encoded = _wire(big)
    assert all(len(k) + len(v or b"") + 1 <= 255 for k, v in encoded.items())
    assert sum(len(k) + len(v or b"") + 2 for k, v in encoded.items()) < 400


@pytest.mark.parametrize(("key", "value", "named"), [
    ("v", "2", "version"),
    ("role", "broker", "role"),
    ("site", "../etc", "site"),
    ("site", "a\n", "site"),
    ("pub", "+9005", "pub"),
    ("pub", " 9005", "pub"),
    ("pub", "1" * 5000, "pub"),
    ("pub", "70000", "pub"),
    ("priv", "-1", "priv"),
    ("id", "2147483648", "id"),
    ("tls", "yes", "tls"),
    ("cluster", "x" * 65, "cluster"),
    ("ver", "1 0", "version"),
    ("ip", "198.18.0.2,../x", "'ip'"),
    ("ip", ",".join(["10.0.0.1"] * 9), "addresses"),
])
def test_bad_values_are_refused_naming_the_key(key: str, value: str, named: str) -> None:
    txt = _wire(SPU)
    txt[key.encode()] = value.encode()
    with pytest.raises(InvalidAnnouncementError, match=named):
        Announcement.from_txt(txt)


def test_missing_port_and_non_utf8_are_refused() -> None:
    txt = _wire(SPU)
    del txt[b"pub"]
    with pytest.raises(InvalidAnnouncementError, match="pub"):
        Announcement.from_txt(txt)
    with pytest.raises(InvalidAnnouncementError, match="UTF-8"):
        Announcement.from_txt({**_wire(SPU), b"site": b"\xff\xfe"})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([b"v", b"role", b"site", b"cluster", b"id", b"pub",
                                        b"priv", b"tls", b"ver", b"gen", b"x", b"\xff"]),
                       st.one_of(st.none(), st.binary(max_size=300),
                                 st.sampled_from([b"1", b"sc", b"spu", b"kitchen", b"9005"]))))
def test_any_txt_decodes_or_is_refused_cleanly(raw: dict[bytes, bytes | None]) -> None:
    try:
        ann = Announcement.from_txt(raw)
    except InvalidAnnouncementError:
        return
    assert Announcement.from_txt(_wire(ann)) == ann


def test_mdns_addresses() -> None:
    assert parse_sc("mdns") == MdnsSpec()
    assert parse_sc("mdns:kitchen") == MdnsSpec("kitchen")
    assert str(MdnsSpec("kitchen")) == "mdns:kitchen"
    assert parse_sc("127.0.0.1:9004") is None
    assert parse_sc("mdns:9004") is None  # a host named mdns
    with pytest.raises(ValueError, match="site name"):
        parse_sc("mdns:../x")
    check_sc_address("sc", "mdns:kitchen")
    with pytest.raises(ConfigError, match=r"sc: .*mdns"):
        check_sc_address("sc", "nowhere")


def test_site_alone_makes_an_spu_look_for_its_sc(tmp_path: object) -> None:
    base = {"data_dir": "/tmp/x", "insecure_private": True}
    cfg = SpuConfig.from_dict({**base, "id": 3, "site": "kitchen"})
    assert cfg.sc == "mdns:kitchen"
    assert cfg.discovery.site == "kitchen"
    static = SpuConfig.from_dict({**base, "id": 3, "site": "kitchen", "sc": "10.0.0.1:9004"})
    assert static.sc == "10.0.0.1:9004"  # a static address always wins
    assert SpuConfig.from_dict({**base, "id": 3}).sc == "127.0.0.1:9004"
    sc = ScConfig.from_dict({**base, "site": "kitchen", "interfaces": ["eth0", "wlan0"],
                             "ipv6": True})
    assert sc.discovery == DiscoveryConfig(site="kitchen", interfaces=("eth0", "wlan0"),
                                           ipv6=True)


@pytest.mark.parametrize(("raw", "message"), [
    ({"site": "no spaces"}, "site"),
    ({"site": "x" * 41}, "site"),
    ({"interfaces": ["eth0/1"]}, "interfaces"),
    ({"interfaces": ["a-very-long-interface"]}, "interfaces"),
    ({"interfaces": "eth0"}, "interfaces must be list"),
    ({"ipv6": "yes"}, "ipv6 must be bool"),
    ({"sc": "mdns:bad site"}, "site name"),
])
def test_bad_discovery_settings_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpuConfig.from_dict({"id": 1, "data_dir": "/tmp/x", **raw})
