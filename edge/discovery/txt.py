"""What a node announces: the DNS-SD service type, instance names and TXT hints.

Pure: no sockets, no zeroconf. One service type for every role; the role is a
TXT key and part of the instance name. (A DNS-SD subtype per role was the first
design, but a responder answers a subtype only to a query for that subtype, so a
browser of the main type would have to send one query per role to see a site.)

TXT keys (RFC 6763: short keys, every value well under 255 bytes):

    v        TXT format version, "1"; a browser ignores other versions
    role     "sc", "spu" or "gateway"
    site     the site name (``[A-Za-z0-9][A-Za-z0-9_-]{0,39}``)
    cluster  the cluster id the node belongs to (the SC's own; an SPU's joined one)
    id       the node number (SPU id; absent for an SC)
    pub      public (client) port; the SRV record carries it too
    priv     private (SC<->SPU, SPU<->SPU) port, SC and SPU only
    tls      "1" when the ports speak TLS
    ver      the software version
    ip       the addresses the node is reachable on, comma-separated: the A records
             of an address that went away stay in browsers' caches for up to two
             minutes, so the announcement says which ones are current
    gen      changes with every update of the announcement, so that browsers see
             an update even when only the addresses changed
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Final

SERVICE_TYPE: Final = "_headwater._tcp.local."
TXT_VERSION: Final = "1"

SITE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
CLUSTER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VERSION: Final = re.compile(r"[A-Za-z0-9.+_-]{1,32}")
MAX_NODE_ID: Final = 2**31 - 1
MAX_GEN: Final = 2**32 - 1
MAX_ADDRESSES: Final = 8


class Role(enum.StrEnum):
    SC = "sc"
    SPU = "spu"
    GATEWAY = "gateway"


class InvalidAnnouncementError(ValueError):
    """A TXT record set that is not a Headwater announcement of this version."""


def check_site(name: str) -> str:
    """The site name, or ValueError saying what a site name may be."""
    if not SITE_NAME.fullmatch(name):
        raise ValueError(f"invalid site name {name!r}: 1-40 letters, digits, '-' or '_', "
                         "starting with a letter or digit")
    return name


@dataclass(frozen=True, kw_only=True)
class Announcement:
    """The hints one node publishes about itself."""

    role: Role
    site: str
    public_port: int
    cluster: str | None = None
    node_id: int | None = None
    private_port: int | None = None
    tls: bool = False
    version: str = "0"
    gen: int = 0
    addresses: tuple[str, ...] = ()
    # Names a gateway's instance (it has no id): its host name. Not in the TXT.
    label: str | None = None

    def __post_init__(self) -> None:
        check_site(self.site)
        if self.cluster is not None and not CLUSTER_ID.fullmatch(self.cluster):
            raise InvalidAnnouncementError(f"invalid cluster id {self.cluster!r}")
        if self.node_id is not None and not 0 <= self.node_id <= MAX_NODE_ID:
            raise InvalidAnnouncementError(f"node id {self.node_id} out of range")
        for port in (self.public_port, self.private_port):
            if port is not None and not 0 <= port <= 65535:
                raise InvalidAnnouncementError(f"port {port} out of range")
        # A gateway serves no Headwater port (0); an SC or SPU always does.
        if self.public_port == 0 and self.role is not Role.GATEWAY:
            raise InvalidAnnouncementError(f"an {self.role.value} needs a public port")
        if self.label is not None and not SITE_NAME.fullmatch(self.label):
            raise InvalidAnnouncementError(f"invalid label {self.label!r}")
        if not VERSION.fullmatch(self.version):
            raise InvalidAnnouncementError(f"invalid version {self.version!r}")
        if not 0 <= self.gen <= MAX_GEN:
            raise InvalidAnnouncementError(f"gen {self.gen} out of range")
        if len(self.addresses) > MAX_ADDRESSES:
            raise InvalidAnnouncementError(f"more than {MAX_ADDRESSES} addresses")
        for a in self.addresses:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise InvalidAnnouncementError(f"TXT key 'ip': {a!r} is not an address") \
                    from None

    @property
    def instance(self) -> str:
        """The DNS-SD instance label: ``kitchen-spu-2``, ``kitchen-sc-10febbc4``.

        An SC's label carries the start of its cluster id: zeroconf renames a clashing
        name only when it already knows the other one, and two SCs started together
        for one site must still be told apart (and reported as ambiguous).
        """
        if self.node_id is not None:
            suffix = f"-{self.node_id}"
        elif self.cluster is not None:
            suffix = f"-{self.cluster[:8]}"
        elif self.label is not None:
            suffix = f"-{self.label}"
        else:
            suffix = ""
        return f"{self.site}-{self.role.value}{suffix}"

    def bumped(self) -> Announcement:
        return replace(self, gen=(self.gen + 1) % (MAX_GEN + 1))

    def to_txt(self) -> dict[str, str]:
        txt = {"v": TXT_VERSION, "role": self.role.value, "site": self.site,
               "pub": str(self.public_port), "tls": "1" if self.tls else "0",
               "ver": self.version, "gen": str(self.gen)}
        if self.cluster is not None:
            txt["cluster"] = self.cluster
        if self.node_id is not None:
            txt["id"] = str(self.node_id)
        if self.private_port is not None:
            txt["priv"] = str(self.private_port)
        if self.addresses:
            txt["ip"] = ",".join(self.addresses)
        return txt

    @classmethod
    def from_txt(cls, raw: dict[bytes, bytes | None]) -> Announcement:
        """Decode and check a TXT record set; InvalidAnnouncementError names the bad key."""
        txt: dict[str, str] = {}
        for k, v in raw.items():
            key = _text(k, "a TXT key")
            if v is not None:
                txt[key] = _text(v, f"TXT key {key!r}")
        if txt.get("v") != TXT_VERSION:
            raise InvalidAnnouncementError(f"TXT version {txt.get('v')!r}, expected {TXT_VERSION}")
        try:
            role = Role(txt.get("role", ""))
        except ValueError:
            raise InvalidAnnouncementError(f"unknown role {txt.get('role')!r}") from None
        try:
            return cls(role=role, site=check_site(txt.get("site", "")),
                       public_port=_int(txt, "pub", 65535), cluster=txt.get("cluster"),
                       node_id=_opt_int(txt, "id", MAX_NODE_ID),
                       private_port=_opt_int(txt, "priv", 65535),
                       tls=_flag(txt, "tls"), version=txt.get("ver", "0"),
                       gen=_opt_int(txt, "gen", MAX_GEN) or 0,
                       addresses=tuple(txt["ip"].split(",")) if txt.get("ip") else ())
        except InvalidAnnouncementError:
            raise
        except ValueError as exc:
            raise InvalidAnnouncementError(str(exc)) from None


def _text(value: bytes, what: str) -> str:
    if len(value) > 255:
        raise InvalidAnnouncementError(f"{what}: longer than 255 bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidAnnouncementError(f"{what}: not UTF-8") from None


def _int(txt: dict[str, str], key: str, limit: int) -> int:
    value = txt.get(key)
    if value is None:
        raise InvalidAnnouncementError(f"TXT key {key!r} missing")
    # Digits only, at most 10 of them: "+1", " 1", "1_0" and bignums are refused.
    if not (value.isascii() and value.isdigit() and len(value) <= 10) or int(value) > limit:
        raise InvalidAnnouncementError(f"TXT key {key!r}: {value!r} is not a number in 0..{limit}")
    return int(value)


def _opt_int(txt: dict[str, str], key: str, limit: int) -> int | None:
    return _int(txt, key, limit) if key in txt else None


def _flag(txt: dict[str, str], key: str) -> bool:
    value = txt.get(key, "0")
    if value not in ("0", "1"):
        raise InvalidAnnouncementError(f"TXT key {key!r}: {value!r} is not 0 or 1")
    return value == "1"
