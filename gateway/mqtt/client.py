"""An aiomqtt client that acknowledges QoS 1 messages on request and can stop reading.

Two things the bridge needs that aiomqtt 2.x does not offer in its public API:

* **Manual PUBACK.** paho-mqtt has ``manual_ack`` (paho PR #753); aiomqtt does not
  expose it yet (aiomqtt issue #345, PR #346), so this class switches it on in the
  wrapped paho client and sends PUBACK through ``paho.Client.ack``.
* **Read pausing.** The bridge bounds the messages it holds unacknowledged. MQTT 5's
  Receive Maximum should make the broker do that, but mosquitto 2.0.11 (Debian
  bookworm, Raspberry Pi OS) releases a whole window of queued messages for every
  PUBACK of the oldest in-flight message (mosquitto issue #2301: it counts the
  in-flight messages only up to the acknowledged one), so with in-order PUBACKs it
  bounds nothing: measured, 8 PUBACKs with Receive Maximum 5 brought 40 messages.
  Pausing the socket reader pushes back through TCP instead: the broker keeps the
  messages queued. paho reads one packet per readable event, so the bound holds to
  within the packets of one read.

Both touch aiomqtt internals (``_client``, ``_on_socket_open``); they are kept in this
one module and covered by tests against a real mosquitto.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.types import PahoSocket


class DeliveredMessage(aiomqtt.Message):
    """An aiomqtt message that keeps paho's DUP flag (set on a broker's redelivery)."""

    def __init__(self, message: paho.MQTTMessage) -> None:
        super().__init__(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=message.retain,
            mid=message.mid,
            properties=getattr(message, "properties", None),
        )
        self.dup = bool(message.dup)


class AckingClient(aiomqtt.Client):
    """``aiomqtt.Client`` with manual PUBACK that holds at most ``max_unacked`` messages.

    Every delivered message (any QoS) counts until ``ack()`` is called for it; at
    ``max_unacked`` the socket reader is paused, and ``ack()`` resumes it. The count
    is kept where paho hands messages over, so messages still waiting in aiomqtt's
    queue count too. The limit applies from ``enforce_limit()`` on: until the SUBACK
    is read the reader must not pause (the broker sends a persistent session's
    queued messages right after CONNACK), and until then nothing is acknowledged,
    so the broker's own window (Receive Maximum) still bounds what arrives.
    """

    def __init__(self, hostname: str, port: int = 1883, *, max_unacked: int,
                 **kwargs: Any) -> None:
        super().__init__(hostname, port, **kwargs)
        self._client.manual_ack_set(True)
        self._max_unacked = max_unacked
        self._enforced = False
        self._unacked = 0
        self._reader_fd: int | None = None
        self._reader: Any = None
        self._paused = False

    @property
    def reading_paused(self) -> bool:
        return self._paused

    @property
    def unacked(self) -> int:
        """Messages delivered and not yet passed to ``ack()``."""
        return self._unacked

    def enforce_limit(self) -> None:
        """Start pausing at ``max_unacked`` (call once subscribed)."""
        self._enforced = True
        if self._unacked >= self._max_unacked and not self._paused:
            self._pause_reading()

    def ack(self, mid: int, qos: int) -> bool:
        """Release a message; for QoS 1, send its PUBACK. False if the connection is gone
        (the broker then delivers the message again on the next connection)."""
        if self._disconnected.done():
            return False
        self._unacked -= 1
        if self._paused and self._unacked < self._max_unacked:
            self._resume_reading()
        if qos == 0:
            return True
        return self._client.ack(mid, qos) == paho.MQTT_ERR_SUCCESS

    def _pause_reading(self) -> None:
        # The broker's writes back up in TCP and it keeps the messages queued.
        self._paused = True
        if self._reader_fd is not None:
            self._loop.remove_reader(self._reader_fd)

    def _resume_reading(self) -> None:
        self._paused = False
        if self._reader_fd is not None and self._reader is not None:
            self._loop.add_reader(self._reader_fd, self._reader)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._unacked += 1
        if self._enforced and self._unacked >= self._max_unacked and not self._paused:
            self._pause_reading()
        try:
            self._queue.put_nowait(DeliveredMessage(message))
        except asyncio.QueueFull:  # pragma: no cover - the queue is unbounded
            self._logger.warning("incoming queue full: message %d dropped", message.mid)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        # The same reader as aiomqtt's, but kept so that it can be removed and re-added.
        def on_readable() -> None:
            try:
                while True:
                    client.loop_read()
                    # An SSL socket may hold decoded bytes that select() does not see.
                    pending = getattr(client.socket(), "pending", None)
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:  # any read failure ends the connection
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        fd = sock.fileno()

        def register() -> None:
            self._reader_fd, self._reader = fd, on_readable
            if not self._paused:
                self._loop.add_reader(fd, on_readable)
            self._misc_task = self._loop.create_task(self._misc_loop(), name="mqtt-keepalive")

        # paho calls this from the executor thread that runs connect().
        self._loop.call_soon_threadsafe(register)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        self._reader_fd = None
        self._reader = None
        super()._on_socket_close(client, userdata, sock)
