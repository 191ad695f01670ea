"""MQTT bridge: a persistent MQTT session on the broker → records on the SPU.

One connection at a time, under a fixed client id with a persistent session
(MQTT 5: clean start off, session expiry; MQTT 3.1.1: clean session off), so the
broker keeps every QoS 1 message the gateway has not acknowledged — across
reconnects, gateway crashes and gateway restarts. Per connection two tasks run:

* the *reader* decodes each message (``decode.Decoder``) into the FIFO of the
  connection (the client stops reading from the socket while ``in_flight``
  messages are unacknowledged);
* the *sender* writes the FIFO in rounds (``writer.RoundWriter``) and sends the
  PUBACKs of the finished head of the FIFO, in arrival order
  (``pipeline`` explains why).

When the SPU is unavailable the sender retries the round with jittered
exponential backoff and nothing is acknowledged: the broker keeps the messages.
When the broker connection drops, the sender first finishes its round (so no
round is ever written twice concurrently), then the bridge reconnects with
jittered exponential backoff and recognises the messages whose PUBACK was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections import Counter
from typing import Any, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.client.cluster import Backoff
from edge.logstate import LogOnce
from gateway.config import MqttConfig, MqttProtocol
from gateway.mqtt.client import AckingClient, Incoming
from gateway.mqtt.decode import Decoder, Rejected
from gateway.mqtt.pipeline import Entry, InFlight, Redeliveries, plan_round
from gateway.mqtt.writer import Counts, ProducerLike, RoundWriter

log = logging.getLogger(__name__)

STAT_KEYS: Final = (
    "received", "produced", "duplicates", "bad_frames", "dead_lettered", "reconnects",
    "spu_retries", "sequence_gaps", "in_flight", "in_flight_peak", "connected",
)  # fmt: skip
# Unsubscribed at a clean stop to learn that the broker has read every PUBACK before
# it (see _flush_acks); nobody subscribes to it, so it changes nothing.
FLUSH_FILTER: Final = "headwater/gateway/flush"
FLUSH_TIMEOUT_S: Final = 2.0


class MqttBridge:
    """Runs the MQTT bridge until ``stop()`` or cancellation."""

    def __init__(
        self, config: MqttConfig, *, producer: ProducerLike, dead_letter_topic: str,
        max_batch_bytes: int = 64 * 1024, send_timeout_s: float = 10.0,
        tls_context: ssl.SSLContext | None = None, backoff_max_s: float = 30.0,
        name: str = "mqtt",
    ) -> None:
        self.config = config
        self.name = name
        self._decode = Decoder(config.rules, max_payload_bytes=config.max_payload_bytes)
        self._tls_context = tls_context
        self._writer = RoundWriter(
            producer, dead_letter_topic=dead_letter_topic, max_batch_bytes=max_batch_bytes,
            timeout_s=send_timeout_s, max_payload_bytes=config.max_payload_bytes,
        )
        self._max_round_bytes = max_batch_bytes * 8
        # A round waits this long for company: fewer, fuller batches under load.
        self._linger_s = config.linger_ms / 1000
        self._backoff_max_s = backoff_max_s
        self._counters: Counter[str] = Counter()
        self._fifo: InFlight | None = None
        self._redeliveries = Redeliveries()
        self._stopping = asyncio.Event()
        # The broker and the SPU: a line when a cause begins and one when it clears.
        self._problems = LogOnce(log)
        self._rejected = LogOnce(log)

    def stats(self) -> dict[str, int]:
        """Counters since start (``in_flight`` and ``connected`` are current values,
        ``in_flight_peak`` the most messages held unacknowledged at once)."""
        out = dict.fromkeys(STAT_KEYS, 0)
        out.update(self._counters)
        out["in_flight"] = len(self._fifo) if self._fifo is not None else 0
        return out

    def stop(self) -> None:
        """Finish the round in progress (or, while the SPU refuses it, acknowledge the
        part already in the log), disconnect, and return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, bridge, reconnect with backoff; returns after ``stop()``."""
        backoff = Backoff(initial=0.2, maximum=self._backoff_max_s)
        while not self._stopping.is_set():
            try:
                client = self._client()
                async with client:
                    self._problems.clear("broker", "connected to the MQTT broker again")
                    log.info("connected to mqtt://%s:%d as %s", self.config.host,
                             self.config.effective_port, self.config.client_id)
                    backoff.reset()
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                self._problems.warning(
                    "broker", "MQTT broker %s:%d unavailable: %s (retrying with backoff)",
                    self.config.host, self.config.effective_port, exc,
                )
            finally:
                self._counters["connected"] = 0
            if self._stopping.is_set():
                return
            self._counters["reconnects"] += 1
            await self._sleep(backoff)

    def _client(self) -> AckingClient:
        cfg = self.config
        common: dict[str, Any] = {
            "identifier": cfg.client_id, "keepalive": cfg.keepalive_s,
            "username": cfg.username, "password": cfg.password(),
            "tls_context": self._tls_context, "timeout": 10.0, "max_unacked": cfg.in_flight,
        }
        if cfg.protocol is MqttProtocol.V311:
            return AckingClient(cfg.host, cfg.effective_port, clean_session=False, **common)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = cfg.session_expiry_s
        # Asks the broker to bound what it sends unacknowledged; the bridge bounds it too
        # (see client.py: mosquitto 2.0.11 overshoots).
        props.ReceiveMaximum = cfg.in_flight
        return AckingClient(
            cfg.host, cfg.effective_port, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False, properties=props, **common,
        )

    async def _subscribe(self, client: AckingClient) -> None:
        """(Re)subscribe every rule; it waits for the SUBACK as long as it takes,
        because a persistent session's messages flow before it, and while the
        bridge holds ``in_flight`` of them the SUBACK waits unread in the socket."""
        if self.config.protocol is MqttProtocol.V311:
            await client.subscribe([(rule.filter, 1) for rule in self.config.rules],
                                   timeout=math.inf)
        else:
            # retainHandling=1: retained messages only for a new subscription, not
            # again at every reconnect (they would be written again each time).
            await client.subscribe([
                (rule.filter, SubscribeOptions(qos=1, retainHandling=1))
                for rule in self.config.rules
            ], timeout=math.inf)
        self._counters["connected"] = 1

    async def _session(self, client: AckingClient) -> None:
        fifo = self._fifo = InFlight()
        wake = asyncio.Event()
        lost: aiomqtt.MqttError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._send_loop(client, fifo, wake), name="mqtt-sender")
                reader = tg.create_task(self._read_loop(client, fifo, wake), name="mqtt-reader")
                stop = tg.create_task(self._stopping.wait(), name="mqtt-stop")
                subscribe = tg.create_task(self._subscribe_or_fail(client), name="mqtt-subscribe")
                waiting: set[asyncio.Task[Any]] = {reader, stop, subscribe}
                while not (reader.done() or stop.done()):
                    _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if subscribe.done() and subscribe.result() is not None:
                        break  # the broker refused the subscription
                if reader.done():
                    lost = reader.result()
                elif subscribe.done():
                    lost = subscribe.result()
                self._counters["connected"] = 0
                for task in (reader, stop, subscribe):
                    task.cancel()
                # The sender finishes its round and acknowledges it, then returns.
                fifo.closing = True
                wake.set()
            if lost is None:
                await self._flush_acks(client)
        finally:
            self._redeliveries.remember(fifo.written_unacked())
            self._fifo = None
        if lost is not None:
            raise lost

    async def _flush_acks(self, client: AckingClient) -> None:
        """Before a clean disconnect, one round trip after the last PUBACK: a broker
        reads a connection's packets in order, so its UNSUBACK means it has read them
        all. Without it a gateway started at once under the same client id can take
        the session over while mosquitto has not read them yet, and it sends those
        messages again (recognised, but sent twice). Best effort: a broker that does
        not answer in time costs only those redeliveries."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.unsubscribe(FLUSH_FILTER, timeout=FLUSH_TIMEOUT_S)

    async def _subscribe_or_fail(self, client: AckingClient) -> aiomqtt.MqttError | None:
        try:
            await self._subscribe(client)
        except aiomqtt.MqttError as exc:
            return exc
        return None

    async def _read_loop(
        self, client: AckingClient, fifo: InFlight, wake: asyncio.Event
    ) -> aiomqtt.MqttError:
        try:
            while True:
                received_ms = int(time.time() * 1000)
                for message in await client.receive():
                    self._accept(message, fifo, received_ms)
                peak = self._counters["in_flight_peak"]
                self._counters["in_flight_peak"] = max(peak, len(fifo))
                wake.set()
        except aiomqtt.MqttError as exc:
            return exc

    def _accept(self, message: Incoming, fifo: InFlight, received_ms: int) -> None:
        topic, payload = message.topic, message.payload
        outcome = self._decode(topic, payload)
        entry = Entry(
            mid=message.mid, qos=message.qos, topic=topic, payload=payload, outcome=outcome,
            received_ms=received_ms,
        )
        self._counters["received"] += 1
        if self._redeliveries.seen_before(entry, dup=message.dup):
            entry.done = True
            self._counters["duplicates"] += max(1, entry.left)
        elif isinstance(outcome, Rejected):
            self._counters["bad_frames"] += 1
            self._log_rejected(topic, outcome)
        fifo.add(entry)

    def _log_rejected(self, topic: str, rejected: Rejected) -> None:
        cause = (rejected.reason.value, rejected.rule.filter if rejected.rule else "")
        self._rejected.warning(
            cause, "dead-lettering %s message on %s: %s (logged once per reason and rule)",
            rejected.reason.value, topic, rejected.detail,
        )

    async def _send_loop(self, client: AckingClient, fifo: InFlight, wake: asyncio.Event) -> None:
        while True:
            entries = await self._next_round(client, fifo, wake)
            if not entries:
                return
            finished = await self._write_round(entries)
            # Also when stopping mid-round: what is already in the log is acknowledged,
            # so the broker redelivers only what the SPU does not have.
            self._ack(client, fifo)
            if not finished:
                return
            if fifo.closing:
                return

    async def _next_round(
        self, client: AckingClient, fifo: InFlight, wake: asyncio.Event
    ) -> list[Entry]:
        """The next round: waits for a first message, then up to ``linger_s`` for the
        round to fill half the window (the other half fills while it is written).
        Empty when the connection is closing."""
        while not fifo.unsent:
            # Recognised redeliveries are done on arrival: acknowledge them meanwhile.
            self._ack(client, fifo)
            if fifo.closing:
                return []
            wake.clear()
            await wake.wait()
        target = max(1, self.config.in_flight // 2)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._linger_s):
                while len(fifo.unsent) < target and not fifo.closing:
                    wake.clear()
                    await wake.wait()
        return fifo.take_round(max_records=self.config.in_flight, max_bytes=self._max_round_bytes)

    def _ack(self, client: AckingClient, fifo: InFlight) -> None:
        fifo.release(lambda entry: client.ack(entry.mid, entry.qos))

    async def _write_round(self, entries: list[Entry]) -> bool:
        """Write a round until every entry is done, backing off while the SPU refuses;
        False if ``stop()`` came first."""
        plan = plan_round(entries)
        backoff = Backoff(initial=0.1, maximum=self._backoff_max_s)
        failing: set[str] = set()
        while True:
            counts = Counts()
            try:
                await self._writer.write(plan, counts)
            # Whatever goes wrong while writing (the SPU, the network, a bug), the
            # messages stay unacknowledged and the bridge keeps running.
            except Exception as exc:
                self._add(counts)
                self._counters["spu_retries"] += 1
                cause = f"spu:{type(exc).__name__}"
                failing.add(cause)
                self._problems.warning(
                    cause, "writing to the SPU failed: %s: %s (retrying with backoff; "
                    "messages stay unacknowledged in the broker)", type(exc).__name__, exc,
                )
                await self._sleep(backoff)
                if self._stopping.is_set():
                    return False
                continue
            self._add(counts)
            for cause in sorted(failing):
                self._problems.clear(cause, "writing to the SPU works again")
            return True

    def _add(self, counts: Counts) -> None:
        self._counters["produced"] += counts.produced
        self._counters["duplicates"] += counts.duplicates
        self._counters["dead_lettered"] += counts.dead_lettered
        self._counters["sequence_gaps"] += counts.gaps

    async def _sleep(self, backoff: Backoff) -> None:
        """Back off, but wake at once on ``stop()``."""
        sleeper = asyncio.ensure_future(backoff.sleep())
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
