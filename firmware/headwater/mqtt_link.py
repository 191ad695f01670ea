# MQTT link for devices that reach a broker instead of a gateway's UART.
#
# Publishes buffered readings with QoS 1 to headwater/<device-id>/<stream>. By
# default it packs up to `pack` readings of one stream into one message
# (docs/GATEWAY.md, "Several readings in one message"):
#     {"d": device, "e": boot epoch, "s": first seq, "r": [reading, ...]}
# Each reading is the bytes the application pushed (one CBOR item), copied as
# they are; reading i has sequence first seq + i. umqtt.simple's publish(qos=1)
# returns only after the broker's PUBACK, and that costs ~44 ms even on loopback
# (it writes a PUBLISH in four pieces, so Nagle's algorithm holds the last ones
# until the broker's delayed ACK): 22 messages/s, so packing is what gives a
# device its rate (docs/PERFORMANCE-mqtt.md).
#
# A reading leaves the buffer only once the broker has PUBACKed the message that
# holds it; the gateway's MQTT bridge acknowledges towards the broker only after
# the SPU has every reading of it. After a failed publish the link packs again
# from the oldest unconfirmed reading, perhaps cutting messages elsewhere: the
# gateway recognises each reading already in the log by its sequence. On any
# socket error the link disconnects and reconnects with jittered exponential
# backoff; readings wait in the buffer meanwhile. TLS is used when the port
# offers it (8883) or when asked for.
#
# pack=0 publishes each pushed reading unchanged, one per message: the
# application then puts "d", "e" and "s" into each reading itself.

import time

from headwater.buffer import seq_add
from headwater.cbor import head_into

try:
    from umqtt.simple import MQTTClient, MQTTException
except ImportError:  # mpy-cross and tests without the package installed
    MQTTClient = None
    MQTTException = OSError

TLS_PORTS = (8883,)
TOPIC_ROOT = b"headwater/"
MAX_PACK = 256  # the gateway's bound on readings per message
MAX_DEVICE_ID = 128  # bytes, the gateway's bound on "d"
# "e" u32, "s" u32 and the head of "r" (up to 256 items), keys included.
_ENVELOPE_MAX = 2 + 5 + 2 + 5 + 2 + 3
# umqtt.simple checks the broker's answers with assertions and indexing: a broker that
# closes the connection mid-answer surfaces as these, not only as OSError.
_LINK_ERRORS = (OSError, AssertionError, IndexError, MQTTException)


def topic_for(device_id, stream):
    did = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
    st = stream.encode() if isinstance(stream, str) else bytes(stream)
    for b in (did, st):
        if not b or b"/" in b or b"+" in b or b"#" in b:
            raise ValueError("device id and stream must be non-empty without / + #")
    return TOPIC_ROOT + did + b"/" + st


def envelope_prefix(device_id):
    """The constant start of every multi-reading message: a 4-pair map and its "d"."""
    did = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
    if not did or len(did) > MAX_DEVICE_ID:
        raise ValueError("device id must be 1-128 bytes")
    out = bytearray(3 + 3 + len(did))
    out[0] = 0xA4
    out[1] = 0x61
    out[2] = 0x64  # "d"
    off = head_into(out, 3, 3, len(did))
    out[off:off + len(did)] = did
    return bytes(out[:off + len(did)])


def _jitter(ms):
    try:
        import random

        return ms // 2 + random.getrandbits(16) % (ms // 2 + 1)
    except ImportError:
        return ms


class MqttLink:
    """Drains per-stream Buffers into an MQTT broker, QoS 1, up to `pack` readings a message."""

    def __init__(self, device_id, server, port=0, user=None, password=None, tls=None,
                 cadata=None, keepalive=60, client_factory=None, min_backoff_ms=500,
                 max_backoff_ms=60000, max_batch=8, boot_epoch=0, pack=32, max_message=2048):
        if pack < 0 or pack > MAX_PACK:
            raise ValueError("pack must be 0..256")
        if max_message < 64 or max_message > 0xFFFF:
            raise ValueError("max_message must be 64..65535")
        self.device_id = device_id
        self.boot_epoch = boot_epoch
        self.cadata = cadata
        self.server = server
        self.port = port or 1883
        self.tls = (self.port in TLS_PORTS) if tls is None else tls
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self._factory = client_factory
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.max_batch = max_batch  # messages per poll
        self.pack = pack
        self.max_message = max_message
        self._prefix = envelope_prefix(device_id) if pack else b""
        self.streams = {}
        self.client = None
        self._backoff = min_backoff_ms
        self._next_attempt = 0
        self._msg = bytearray(max_message)
        # published: messages PUBACKed; readings: readings they held.
        self.stats = {"connects": 0, "published": 0, "readings": 0, "errors": 0}

    def add_stream(self, name, buf):
        self.streams[name] = (topic_for(self.device_id, name), buf)

    def push(self, stream, value):
        """Buffer one reading (bytes: one CBOR item); return its seq, or -1 if the buffer is full."""
        return self.streams[stream][1].append(value, self.boot_epoch)

    def _new_client(self):
        cid = self.device_id.encode() if isinstance(self.device_id, str) else self.device_id
        factory = self._factory or MQTTClient
        if factory is None:
            raise OSError("umqtt.simple is not installed")
        kw = {"port": self.port, "user": self.user, "password": self.password,
              "keepalive": self.keepalive}
        if self.tls:
            kw["ssl"] = self._ssl_context()
        return factory(cid, self.server, **kw)

    def _ssl_context(self):
        # umqtt.simple takes an SSLContext in current micropython-lib, True in old releases.
        try:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if self.cadata is not None:
                ctx.load_verify_locations(cadata=self.cadata)
                ctx.verify_mode = ssl.CERT_REQUIRED
            else:
                # Encrypted but unauthenticated: pass cadata to pin the broker's CA.
                ctx.verify_mode = ssl.CERT_NONE
            return ctx
        except (ImportError, AttributeError):
            return True

    def poll(self, now=None):
        """Connect if due, then publish up to max_batch messages; return the readings
        the broker confirmed. Never raises on a broken connection."""
        if now is None:
            now = time.ticks_ms()
        if self.client is None:
            if time.ticks_diff(now, self._next_attempt) < 0:
                return 0
            try:
                c = self._new_client()
                c.connect()
            except _LINK_ERRORS:
                self._failed(now)
                return 0
            self.client = c
            self.stats["connects"] += 1
        sent = 0
        messages = 0
        try:
            for topic, buf in self.streams.values():
                while messages < self.max_batch and buf.in_ram():
                    epoch = buf.epoch_at(0)
                    n, size = self.pack_message(buf)
                    self.client.publish(topic, memoryview(self._msg)[:size], False, 1)
                    buf.confirm(epoch, seq_add(buf.first_seq, n))
                    messages += 1
                    sent += n
                    self.stats["published"] += 1
                    self.stats["readings"] += n
            self._backoff = self.min_backoff_ms
        except _LINK_ERRORS:
            self._failed(now)
        return sent

    def pack_message(self, buf):
        """Build the next message of buf (its oldest readings) in the message buffer;
        return (readings in it, length). Only readings of one boot epoch share a message."""
        if not self.pack:
            self._room(buf.size_at(0))
            return 1, buf.copy_into(0, self._msg, 0)
        epoch = buf.epoch_at(0)
        fixed = len(self._prefix) + _ENVELOPE_MAX
        avail = buf.in_ram()
        n = 0
        size = 0
        while n < self.pack and n < avail and buf.epoch_at(n) == epoch:
            s = buf.size_at(n)
            if n and fixed + size + s > self.max_message:
                break
            size += s
            n += 1
        # Only a reading too big for max_message on its own grows the buffer.
        self._room(fixed + size)
        m = self._msg
        off = len(self._prefix)
        m[0:off] = self._prefix
        m[off] = 0x61
        m[off + 1] = 0x65  # "e"
        off = head_into(m, off + 2, 0, epoch)
        m[off] = 0x61
        m[off + 1] = 0x73  # "s"
        off = head_into(m, off + 2, 0, buf.first_seq)
        m[off] = 0x61
        m[off + 1] = 0x72  # "r"
        off = head_into(m, off + 2, 4, n)
        for i in range(n):
            off += buf.copy_into(i, m, off)
        return n, off

    def _room(self, n):
        if n > len(self._msg):
            self._msg = bytearray(n)

    def _failed(self, now):
        self.stats["errors"] += 1
        if self.client is not None:
            try:
                self.client.disconnect()
            except _LINK_ERRORS:
                pass
            self.client = None
        self._next_attempt = time.ticks_add(now, _jitter(self._backoff))
        self._backoff = min(self._backoff * 2, self.max_backoff_ms)
