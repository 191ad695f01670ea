"""A consumer's membership of a group: join, heartbeat, follow rebalances, leave.

One background task keeps a heartbeat outstanding on its own SC connection;
the SC answers it at once when the group changed and otherwise after a third
of the session timeout. A new generation takes the member's partitions away
at once (its consumer stops handing out their records) and the next heartbeat
acknowledges it; the new assignment, with the committed positions, arrives
when every member has done the same. A member that cannot reach the SC for its
session timeout stops reading on its own, since the SC will have given its
partitions to another member by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from edge.client.cluster import ClusterClient
from edge.net.backoff import Backoff
from edge.net.connection import ClientConnection
from edge.protocol import groups as msg
from edge.protocol.errors import HeadwaterError, StaleGeneration, UnknownMember
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_response

log = logging.getLogger(__name__)


class Assignment(NamedTuple):
    """The partitions a member reads at a generation, with their committed positions."""

    generation: int
    offsets: dict[int, int | None]


def check_session_timeout(seconds: float) -> int:
    """The session timeout in ms, refused outside what the SC accepts."""
    ms = round(seconds * 1000)
    if not msg.MIN_SESSION_TIMEOUT_MS <= ms <= msg.MAX_SESSION_TIMEOUT_MS:
        raise ValueError(f"session timeout must be {msg.MIN_SESSION_TIMEOUT_MS / 1000:g}.."
                         f"{msg.MAX_SESSION_TIMEOUT_MS / 1000:g} s, not {seconds:g}")
    return ms


class GroupMember:
    """Membership of ``group`` reading ``topic``; ``assignment`` is what it may read now."""

    def __init__(self, cluster: ClusterClient, group: str, topic: str, *,
                 session_timeout_s: float = msg.DEFAULT_SESSION_TIMEOUT_MS / 1000,
                 assignor: str = msg.Assignor.RANGE.value, client: str = "") -> None:
        self.cluster = cluster
        self.group = group
        self.topic = topic
        self.session_ms = check_session_timeout(session_timeout_s)
        self.assignor = msg.Assignor(assignor).value
        self.client = client[:msg.NAME_CHARS]
        self.member: str | None = None
        self.generation = 0  # the generation followed; the next heartbeat acknowledges it
        self.assignment: Assignment | None = None
        self.changed = asyncio.Event()  # set whenever the assignment is given or taken
        self.failure: HeadwaterError | None = None
        # Run when partitions are about to be given up, while commit() still stores them.
        self.on_revoke: Callable[[], Awaitable[object]] | None = None
        self._releasing: Assignment | None = None
        self._wait_ms = 0
        self._last_ok = 0.0
        self._conn: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join (errors such as an unknown topic surface here) and start heartbeating."""
        await self._join()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"group-{self.group}-heartbeat")

    async def _join(self) -> None:
        meta = await self.cluster.sc_request(
            ApiKey.GROUP_JOIN, group=self.group, topic=self.topic,
            session_timeout_ms=self.session_ms, assignor=self.assignor, client=self.client)
        joined = decode_response(msg.JOINED, meta)
        self.member, self.generation = joined.member, joined.generation
        self._wait_ms = joined.heartbeat_ms
        self._last_ok = time.monotonic()
        log.info("group %s: joined as %s at generation %d", self.group, self.member,
                 self.generation)

    async def _run(self) -> None:
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                if self.member is None:
                    await self._join()
                await self._beat()
                backoff.reset()
            except UnknownMember as exc:
                self._revoke(str(exc))
                self.member = None
            except HeadwaterError as exc:
                if not exc.retriable:
                    self._fail(exc)
                    return
                log.info("group %s: heartbeat failed (%s); retrying", self.group, exc)
                await self._drop_connection()
                if self._silent():
                    self._revoke("no answer from the SC within the session timeout")
                await backoff.sleep()

    async def _beat(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = await self.cluster.connect(self.cluster.sc_addr)
        meta, _ = await self._conn.request(
            ApiKey.GROUP_HEARTBEAT, timeout=(self._wait_ms + self.session_ms / 3) / 1000,
            group=self.group, member=self.member, generation=self.generation,
            assigned=self.assignment is not None, max_wait_ms=self._wait_ms)
        answer = decode_response(msg.HEARTBEAT_ANSWER, meta)
        self._last_ok = time.monotonic()
        if answer.generation != self.generation:
            await self._release(f"generation {answer.generation} started")
            self.generation = answer.generation
        elif answer.assignment is not None and self.assignment is None:
            self.assignment = Assignment(answer.generation,
                                         {a.partition: a.offset for a in answer.assignment})
            log.info("group %s: generation %d gives %s partitions %s", self.group,
                     self.generation, self.topic, sorted(self.assignment.offsets))
            self.changed.set()

    def _silent(self) -> bool:
        return time.monotonic() - self._last_ok > self.session_ms / 1000

    def _revoke(self, why: str) -> None:
        if self.assignment is not None:
            log.info("group %s: partitions %s taken back (%s)", self.group,
                     sorted(self.assignment.offsets), why)
            self.assignment = None
            self.changed.set()

    async def _release(self, why: str) -> None:
        """Stop handing out records, let ``on_revoke`` commit, then give the partitions up
        (the next heartbeat acknowledges the generation)."""
        held = self.assignment
        self._revoke(why)
        if held is None or self.on_revoke is None:
            return
        self._releasing = held
        try:
            async with asyncio.timeout(self.session_ms / 3000):
                await self.on_revoke()
        except Exception as exc:  # the application's callback must not end the membership
            log.warning("group %s: on_revoke failed: %r", self.group, exc)
        finally:
            self._releasing = None

    def _fail(self, exc: HeadwaterError) -> None:
        log.warning("group %s: membership ended: %s", self.group, exc)
        self._revoke(str(exc))
        self.failure = exc
        self.changed.set()

    def holds(self, generation: int) -> bool:
        """Whether the partitions given at ``generation`` may still be read."""
        a = self.assignment
        return a is not None and a.generation == generation and not self._silent()

    async def wait_assignment(self) -> Assignment:
        """The current assignment, waiting through a rebalance for it."""
        while True:
            if self.failure is not None:
                raise self.failure
            a = self.assignment
            if a is not None and self.holds(a.generation):
                return a
            self.changed.clear()
            await self.changed.wait()

    async def wait_revoked(self, generation: int) -> None:
        """Return once the partitions of ``generation`` are taken back."""
        while self.holds(generation):
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                # Also wakes for the self-fence, which no heartbeat answer announces.
                async with asyncio.timeout(self.session_ms / 3000):
                    await self.changed.wait()

    async def commit(self, generation: int, offsets: dict[int, int]) -> dict[int, int]:
        """Store the positions of the partitions held at ``generation``; returns what
        was stored. A refused commit (the partitions moved on) stores nothing: their
        next reader starts from the last position that was accepted."""
        a = next((x for x in (self.assignment, self._releasing)
                  if x is not None and x.generation == generation), None)
        if a is None or self.member is None:
            return {}
        chosen = {p: o for p, o in sorted(offsets.items()) if p in a.offsets}
        if not chosen:
            return {}
        try:
            await self.cluster.sc_request(
                ApiKey.GROUP_COMMIT, group=self.group, member=self.member,
                generation=generation,
                offsets=[{"partition": p, "offset": o} for p, o in chosen.items()])
        except (StaleGeneration, UnknownMember) as exc:
            log.info("group %s: commit refused: %s", self.group, exc)
            return {}
        return chosen

    async def leave(self) -> None:
        """Stop heartbeating and leave, so the group rebalances at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.member is not None:
            await self._release("leaving the group")
        member, self.member = self.member, None
        # Hang up the heartbeat first: the SC drops the heartbeat waiting on it.
        await self._drop_connection()
        if member is not None:
            with contextlib.suppress(HeadwaterError):
                await self.cluster.sc_request(ApiKey.GROUP_LEAVE, group=self.group,
                                              member=member)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
