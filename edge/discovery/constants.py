"""Discovery timings in one place, so that tests can shrink them."""

from __future__ import annotations

# How often announcing nodes look at their interface addresses: a DHCP renewal
# or a Pi moved from wlan0 to eth0 is announced within this (plus one packet).
ADDRESS_POLL_S = 2.0
# How long a browser waits for the SRV/TXT/A answers of one instance.
RESOLVE_TIMEOUT_MS = 3000
# How long a client (`--sc mdns:SITE`) listens for the site's SC before giving up.
FIND_TIMEOUT_S = 5.0
# How long after the first SC of a site is seen a client keeps listening for
# others, so that two SCs claiming one site are noticed instead of picked at random.
# Over a second: a responder multicasts a record at most once a second, so one
# that has just answered another browser answers this one's second query.
SETTLE_S = 1.5
