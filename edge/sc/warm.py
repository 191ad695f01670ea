"""A standby SC's warm copy of the metadata, kept current through one etcd watch.

A standby loads both stores (edge/sc/etcd_store.py) once and then follows every
change under the cluster's prefix with a watch from the revision it loaded, so the
SC that wins the election starts from memory instead of reading everything.

Whether the copy is complete when the standby takes over is proven, not assumed:
the watch covers the election key too, and events arrive in revision order, so
once the copy has seen its own winning leader key (its create revision) it holds
every change before it. Every write of the SC before it carried that SC's fence,
and its key was gone before ours was created, so nothing of the old SC can come
after. If the watch does not get there within ``TAKEOVER_WAIT_S`` (a member that
hangs, a watch that was cut), the copy is dropped and the stores are loaded again
with a range read, as without a warm copy. A watch that ends (etcd compacted
past it, the member went away) loads again and watches from there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

from edge.logstate import StateLog
from edge.sc.etcd import Compare, EtcdClient, MetadataUnavailable, Watch, WatchEvent
from edge.sc.etcd_store import (
    GROUPS_PREFIX,
    METADATA_PREFIX,
    EtcdGroupStore,
    EtcdMetadataStore,
)

log = logging.getLogger(__name__)

# How long a new active SC waits for its copy to see its own leader key.
TAKEOVER_WAIT_S: Final = 0.5
RETRY_S: Final = 1.0


class WarmCopy:
    """Both stores of ``prefix``, loaded once and followed by a watch in a thread."""

    def __init__(self, client: EtcdClient, prefix: str, fence: Callable[[], Compare]) -> None:
        self._client = client
        self._prefix = prefix.rstrip("/")
        self._fence = fence
        self.metadata: EtcdMetadataStore | None = None
        self.groups: EtcdGroupStore | None = None
        # Every change up to this revision is in both stores (0: no copy yet).
        self.revision = 0
        self._moved = threading.Condition()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._loaded = 0
        self._failing = StateLog(log)
        self._thread = threading.Thread(target=self._run, name="sc-warm-copy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, revision: int, wait_s: float = TAKEOVER_WAIT_S
             ) -> tuple[EtcdMetadataStore, EtcdGroupStore] | None:
        """Stop following and hand over the stores if they hold every change up to
        ``revision`` (waiting up to ``wait_s``); None when they cannot be shown to."""
        with self._moved:
            self._moved.wait_for(lambda: self.revision >= revision, timeout=wait_s)
            current = self.revision >= revision
        self.close()
        if (not current or self._thread.is_alive() or self.metadata is None
                or self.groups is None):
            return None
        return self.metadata, self.groups

    def close(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._load()
                self._follow()
            except (MetadataUnavailable, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                self._failing.begin("standby copy of the metadata not current (%s); loading it "
                              "again", exc)
            except Exception as exc:  # a row this version cannot read: load on takeover
                if not self._stop.is_set():
                    log.warning("standby copy of the metadata given up: %s", exc)
                self._set_revision(0)
                return
            self._stop.wait(RETRY_S)

    def _load(self) -> None:
        self._set_revision(0)
        metadata = EtcdMetadataStore(self._client, prefix=f"{self._prefix}/{METADATA_PREFIX}",
                                     fence=self._fence, standby=True)
        groups = EtcdGroupStore(self._client, prefix=f"{self._prefix}/{GROUPS_PREFIX}",
                                fence=self._fence)
        self.metadata, self.groups = metadata, groups
        self._loaded = min(metadata.loaded_revision, groups.loaded_revision)

    def _follow(self) -> None:
        watch = self._client.watch(self._prefix + "/", prefix=True,
                                   start_revision=self._loaded + 1)
        self._watch = watch
        if self._stop.is_set():  # closed while it was being opened
            watch.close()
            return
        self._set_revision(self._loaded)
        self._failing.end("standby copy of the metadata follows etcd again")
        try:
            for events in watch.events():
                self._apply(events)
        finally:
            watch.close()

    def _apply(self, events: list[WatchEvent]) -> None:
        assert self.metadata is not None
        assert self.groups is not None
        self.metadata.apply_events(events)
        self.groups.apply_events(events)
        self._set_revision(max(e.mod_revision for e in events))

    def _set_revision(self, revision: int) -> None:
        with self._moved:
            self.revision = revision
            self._moved.notify_all()
