"""mDNS/DNS-SD discovery of a site's SC, SPUs and gateways (python-zeroconf).

Announcements are hints, never proof: whoever acts on one checks the cluster id
the peer answers with (and, with TLS, its certificate) before trusting it.
Liveness comes from heartbeats, not from mDNS record lifetimes. ``zeroconf`` is
imported only by the modules that talk on the network, so a node that does not
use discovery never pays for it (about 3.5 MB of RSS on a Pi).
"""

from edge.discovery.spec import MdnsSpec, parse_sc
from edge.discovery.txt import (
    SERVICE_TYPE,
    Announcement,
    InvalidAnnouncementError,
    Role,
    check_site,
)

__all__ = ["SERVICE_TYPE", "Announcement", "InvalidAnnouncementError", "MdnsSpec", "Role",
           "check_site", "parse_sc"]
