"""The SC's consumer-group APIs: decode once, call the coordinator, answer.

A heartbeat that brings a member nothing new waits (up to the member's
``max_wait_ms``, capped at a third of its session) for a change of its group,
so a rebalance reaches every member as it happens, not at its next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge.net.server import Connection, Response
from edge.protocol import groups as msg
from edge.protocol import messages
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_request, to_wire
from edge.sc.controller import Controller
from edge.sc.group_store import GroupStore
from edge.sc.groups import Coordinator, heartbeat_ms

Handler = Callable[[Connection, dict[Any, Any], bytes], Response | Awaitable[Response]]


class GroupHandlers:
    """Consumer groups on top of the controller's topics."""

    def __init__(self, controller: Controller, store: GroupStore) -> None:
        self.controller = controller
        self.coordinator = Coordinator(store, partitions_of=self._partitions_of,
                                       high_watermarks=self._high_watermarks)
        controller.watchers.add(self._topics_changed)

    def table(self) -> dict[ApiKey, Handler]:
        return {
            ApiKey.GROUP_JOIN: self.join,
            ApiKey.GROUP_HEARTBEAT: self.heartbeat,
            ApiKey.GROUP_LEAVE: self.leave,
            ApiKey.GROUP_COMMIT: self.commit,
            ApiKey.LIST_GROUPS: self.list_groups,
            ApiKey.GROUP_RESET: self.reset,
            ApiKey.GROUP_DELETE: self.delete,
        }

    def expire(self) -> None:
        self.coordinator.expire(time.monotonic())

    def _partitions_of(self, topic: str) -> int | None:
        row = self.controller.store.topic(topic)
        return None if row is None else row.partitions

    def _high_watermarks(self, topic: str) -> dict[int, int]:
        """What each partition's leader last reported (a heartbeat ago at most)."""
        out = {}
        for p in self.controller.store.partitions(topic):
            hw = self.controller.partition_status(p).get("hw")
            if isinstance(hw, int) and not isinstance(hw, bool):
                out[p.idx] = hw
        return out

    def _topics_changed(self) -> None:
        self.coordinator.topics_changed(time.monotonic())
        self.coordinator.store.forget_topics_except(t.name for t in
                                                    self.controller.store.topics())

    # handlers -----------------------------------------------------------------

    def join(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        answer = self.coordinator.join(decode_request(msg.JOIN, meta), time.monotonic())
        return messages.ok(meta["id"], **to_wire(answer)), b""

    def heartbeat(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                  ) -> Awaitable[Response]:
        req = decode_request(msg.HEARTBEAT, meta)
        answer = self.coordinator.heartbeat(req, time.monotonic())
        return self._answer_later(conn, meta["id"], req, answer)

    async def _answer_later(self, conn: Connection, cid: int, req: msg.HeartbeatRequest,
                            answer: msg.HeartbeatResponse) -> Response:
        group = self.coordinator.groups.get(req.group)
        member = group.members.get(req.member) if group is not None else None
        wait_ms = min(req.max_wait_ms, heartbeat_ms(member.session_ms)) if member else 0
        if wait_ms > 0 and self.coordinator.nothing_new(req, answer):
            changed = asyncio.Event()
            watchers = self.coordinator.watchers[req.group]
            watchers.add(changed.set)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_ms / 1000):
                        await changed.wait()
            finally:
                watchers.discard(changed.set)
                if not watchers:
                    self.coordinator.watchers.pop(req.group, None)
            if conn.closed:
                return None  # the member hung up (it left, or stops): nobody to answer
            answer = self.coordinator.heartbeat(req, time.monotonic())
        return messages.ok(cid, **to_wire(answer)), b""

    def leave(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        self.coordinator.leave(decode_request(msg.LEAVE, meta), time.monotonic())
        return messages.ok(meta["id"]), b""

    def commit(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        self.coordinator.commit(decode_request(msg.COMMIT, meta), time.monotonic())
        return messages.ok(meta["id"]), b""

    def list_groups(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(msg.LIST, meta)
        rows = self.coordinator.describe(time.monotonic(), req.group)
        return messages.ok(meta["id"], groups=to_wire(rows)), b""

    def reset(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        self.coordinator.reset(decode_request(msg.RESET, meta))
        return messages.ok(meta["id"]), b""

    def delete(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        removed = self.coordinator.delete(decode_request(msg.DELETE, meta).group)
        return messages.ok(meta["id"], positions=removed), b""
