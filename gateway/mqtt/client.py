"""An aiomqtt client that acknowledges QoS 1 messages on request and can stop reading.

Two things the bridge needs that aiomqtt 2.x does not offer in its public API:

* **Manual PUBACK.** paho-mqtt has ``manual_ack`` (paho PR #753); aiomqtt does not
  expose it yet (aiomqtt issue #345, PR #346), so this class switches it on in the
  wrapped paho client and sends PUBACK through ``paho.Client.ack``.
* **Bursts.** ``async for`` over aiomqtt's ``messages`` costs a task, an
  ``asyncio.wait`` and a validated ``Topic`` per message; ``receive()`` hands over
  everything that arrived since the last call in one list instead.
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
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.types import PahoSocket


@dataclass(frozen=True, slots=True)
class Incoming:
    """A received PUBLISH, with the DUP flag a broker sets on a redelivery."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool

    @classmethod
    def from_paho(cls, message: paho.MQTTMessage) -> Incoming:
        # Brokers check that topics are UTF-8; should one slip through, the message
        # still reaches the dead-letter topic instead of failing the connection.
        raw: bytes = message._topic
        return cls(raw.decode("utf-8", "replace"), bytes(message.payload), message.qos,
                   message.mid, bool(message.dup))


class AckingClient(aiomqtt.Client):
    """``aiomqtt.Client`` with manual PUBACK that holds at most ``max_unacked`` messages.

    Every delivered message (any QoS) counts until ``ack()`` is called for it; at
    ``max_unacked`` the socket reader is paused, and ``ack()`` resumes it. The count
    is kept where paho hands messages over, so messages not yet taken by
    ``receive()`` count too. The limit holds from the CONNACK on: after a
    reconnect mosquitto sends every message it counts as in flight at once,
    Receive Maximum or not, so even the SUBACK may have to wait behind them.
    """

    def __init__(self, hostname: str, port: int = 1883, *, max_unacked: int,
                 **kwargs: Any) -> None:
        super().__init__(hostname, port, **kwargs)
        self._client.manual_ack_set(True)
        self._max_unacked = max_unacked
        self._unacked = 0
        self._incoming: list[Incoming] = []
        self._arrived: asyncio.Future[None] | None = None
        self._reader_fd: int | None = None
        self._reader: Any = None
        self._paused = False

    async def receive(self) -> list[Incoming]:
        """Every message received since the last call, waiting for at least one;
        raises ``aiomqtt.MqttError`` once the connection is gone."""
        while not self._incoming:
            if self._disconnected.done():
                cause = None if self._disconnected.cancelled() else self._disconnected.exception()
                raise aiomqtt.MqttError("disconnected") from cause
            self._arrived = self._loop.create_future()
            await asyncio.wait({self._arrived, self._disconnected},
                               return_when=asyncio.FIRST_COMPLETED)
        batch, self._incoming = self._incoming, []
        return batch

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
        if self._unacked >= self._max_unacked and not self._paused:
            self._pause_reading()
        self._incoming.append(Incoming.from_paho(message))
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

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
