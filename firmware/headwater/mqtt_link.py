# MQTT link for devices that reach a broker instead of a gateway's UART.
#
# Publishes each buffered record with QoS 1 to headwater/<device-id>/<stream>.
# umqtt.simple's publish(qos=1) returns only after the broker's PUBACK, so a
# record leaves the buffer only once the broker has it; the gateway's MQTT
# bridge acknowledges towards the broker only after the SPU has it. On any
# socket error the link disconnects and reconnects with jittered exponential
# backoff; records wait in the buffer meanwhile. TLS is used when the port
# offers it (8883) or when asked for.

import time

try:
    from umqtt.simple import MQTTClient
except ImportError:  # mpy-cross and tests without the package installed
    MQTTClient = None

TLS_PORTS = (8883,)
TOPIC_ROOT = b"headwater/"


def topic_for(device_id, stream):
    did = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
    st = stream.encode() if isinstance(stream, str) else bytes(stream)
    for b in (did, st):
        if not b or b"/" in b or b"+" in b or b"#" in b:
            raise ValueError("device id and stream must be non-empty without / + #")
    return TOPIC_ROOT + did + b"/" + st


def _jitter(ms):
    try:
        import random

        return ms // 2 + random.getrandbits(16) % (ms // 2 + 1)
    except ImportError:
        return ms


class MqttLink:
    """Drains per-stream Buffers into an MQTT broker, QoS 1."""

    def __init__(self, device_id, server, port=0, user=None, password=None, tls=None,
                 cadata=None, keepalive=60, client_factory=None, min_backoff_ms=500,
                 max_backoff_ms=60000, max_batch=8, boot_epoch=0):
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
        self.max_batch = max_batch
        self.streams = {}
        self.client = None
        self._backoff = min_backoff_ms
        self._next_attempt = 0
        self._value = bytearray(1024)
        self.stats = {"connects": 0, "published": 0, "errors": 0}

    def add_stream(self, name, buf):
        self.streams[name] = (topic_for(self.device_id, name), buf)

    def push(self, stream, value):
        """Buffer one reading (bytes, e.g. CBOR); return its seq, or -1 if the buffer is full."""
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
        """Connect if due, then publish up to max_batch records; never raises OSError."""
        if now is None:
            now = time.ticks_ms()
        if self.client is None:
            if time.ticks_diff(now, self._next_attempt) < 0:
                return 0
            try:
                c = self._new_client()
                c.connect()
            except OSError:
                self._failed(now)
                return 0
            self.client = c
            self.stats["connects"] += 1
        sent = 0
        try:
            for topic, buf in self.streams.values():
                while sent < self.max_batch and buf.in_ram():
                    n = buf.copy_into(0, self._value, 0)
                    self.client.publish(topic, memoryview(self._value)[:n], False, 1)
                    buf.confirm(buf.epoch_at(0), (buf.first_seq + 1) & 0x7FFFFFFF)
                    sent += 1
                    self.stats["published"] += 1
            self._backoff = self.min_backoff_ms
        except OSError:
            self._failed(now)
        return sent

    def _failed(self, now):
        self.stats["errors"] += 1
        if self.client is not None:
            try:
                self.client.disconnect()
            except OSError:
                pass
            self.client = None
        self._next_attempt = time.ticks_add(now, _jitter(self._backoff))
        self._backoff = min(self._backoff * 2, self.max_backoff_ms)
