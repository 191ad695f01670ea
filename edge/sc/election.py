"""One active SC among several, chosen with an etcd lease and a leader key.

A candidate holds ``{prefix}/leader`` when it created that key (a txn whose
compare is ``create_revision == 0``: nobody holds it) bound to its own lease. The
key goes away when the lease expires (the holder stopped renewing: paused, cut off
from etcd's quorum, dead) or when the holder resigns; candidates waiting poll
every quarter of the TTL and the first txn after that wins.

Holding the key is not enough to act: a paused SC wakes up believing it leads.
So every write of the active SC carries :meth:`Election.fence`, a compare that
holds only while the leader key is still the one it created. Once another
candidate created its own key, the old holder's writes fail inside etcd itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time

from edge.sc.etcd import Compare, EtcdClient, KeyValue, MetadataUnavailable, Op

log = logging.getLogger(__name__)

# No revision is negative and a missing key compares as 0: this never holds.
_NEVER: int = -1


class Election:
    """Campaign for, hold, and give up ``{prefix}/leader`` (synchronous)."""

    def __init__(self, client: EtcdClient, *, prefix: str, candidate: dict[str, str],
                 ttl_s: int = 2) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1 second")
        self.client = client
        self.key = f"{prefix}/leader"
        self.candidate = dict(candidate)
        self.ttl_s = ttl_s
        self._value = json.dumps(self.candidate, sort_keys=True)
        self._lease = 0
        self._revision = _NEVER
        self._leading = False
        # Past this instant (monotonic) the lease may have expired in etcd.
        self._deadline = 0.0

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def revision(self) -> int:
        """The create revision of the leader key this candidate holds (or last held)."""
        return self._revision

    def campaign(self, stop: threading.Event | None = None) -> None:
        """Block until this candidate holds the leader key (or ``stop`` is set)."""
        stop = stop or threading.Event()
        unavailable_logged = False
        while not stop.is_set():
            try:
                if self._try_once():
                    return
                unavailable_logged = False
            except MetadataUnavailable as exc:
                if not unavailable_logged:
                    log.warning("election %s: etcd unavailable (%s); still trying", self.key,
                                exc)
                    unavailable_logged = True
            stop.wait(self.ttl_s / 4)
        with contextlib.suppress(MetadataUnavailable):
            self._drop_lease()

    def _try_once(self) -> bool:
        if not self._lease or not self._renew_lease():
            self._lease = self.client.lease_grant(self.ttl_s)
            self._deadline = time.monotonic() + self.ttl_s
        started = time.monotonic()
        result = self.client.txn(
            [Compare.create_revision(self.key, 0)],
            [Op.put(self.key, self._value, lease=self._lease)],
            [Op.get(self.key)])
        if result.succeeded:
            return self._won(result.revision, started)
        holder = result.ranges[0][0] if result.ranges and result.ranges[0] else None
        # A txn sent twice (its first answer lost) finds our own key: we won then.
        if holder is not None and holder.lease == self._lease:
            return self._won(holder.create_revision, started)
        return False

    def _won(self, revision: int, started: float) -> bool:
        self._revision = revision
        self._leading = True
        self._deadline = started + self.ttl_s
        log.info("election %s: leading (revision %d, lease %x)", self.key, revision,
                 self._lease)
        return True

    def _renew_lease(self) -> bool:
        started = time.monotonic()
        if self.client.lease_keepalive(self._lease) <= 0:
            return False
        self._deadline = started + self.ttl_s
        return True

    def keepalive(self) -> bool:
        """Renew the lease once; False once leadership is lost (lease expired, key gone
        or someone else's, or etcd unreachable for longer than the TTL)."""
        if not self._leading:
            return False
        try:
            held = self._renew_lease() and self._key_is_ours()
        except MetadataUnavailable:
            # Not known to be lost yet; past the deadline it must be assumed.
            held = time.monotonic() < self._deadline
        if not held:
            self._leading = False
            log.warning("election %s: leadership lost", self.key)
        return held

    def _key_is_ours(self) -> bool:
        found = self.client.range(self.key)
        return bool(found) and found[0].create_revision == self._revision

    def leader(self) -> dict[str, str] | None:
        """The current leader's candidate dict, or None when nobody leads."""
        found = self.client.range(self.key)
        return _candidate(found[0]) if found else None

    def fence(self) -> Compare:
        """The compare every write of the active SC carries.

        It is on the leader key's create_revision, not its mod_revision: the
        create_revision names one tenure (a new leader's key is created at a later
        revision, and a key deleted and created again gets a new one), while the
        mod_revision would also change if a leader ever rewrote its own value (its
        addresses), which must not fence the leader itself. Before a campaign was
        won this never holds.
        """
        return Compare.create_revision(self.key, self._revision)

    def resign(self) -> None:
        """Give up leadership now: delete our key and revoke the lease."""
        was_leading, self._leading = self._leading, False
        try:
            if was_leading:
                self.client.txn([self.fence()], [Op.delete(self.key)])
                log.info("election %s: resigned", self.key)
        finally:
            self._drop_lease()

    def _drop_lease(self) -> None:
        lease, self._lease = self._lease, 0
        if lease:
            self.client.lease_revoke(lease)


def _candidate(kv: KeyValue) -> dict[str, str] | None:
    try:
        value = json.loads(kv.value)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}
