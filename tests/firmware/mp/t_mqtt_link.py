# ruff: noqa: UP031, RUF007, B905 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
from headwater.buffer import Buffer
from headwater.mqtt_link import MqttLink, topic_for
from support import check, eq


class FakeClient:
    instances = []
    fail_connect = 0
    fail_publish_after = -1

    def __init__(self, client_id, server, **kw):
        self.client_id = client_id
        self.server = server
        self.kw = kw
        self.published = []
        FakeClient.instances.append(self)

    def connect(self):
        if FakeClient.fail_connect:
            FakeClient.fail_connect -= 1
            raise OSError(111)

    def publish(self, topic, msg, retain=False, qos=0):
        if FakeClient.fail_publish_after == 0:
            raise OSError(104)
        FakeClient.fail_publish_after -= 1
        self.published.append((bytes(topic), bytes(msg), retain, qos))

    def disconnect(self):
        pass


def _link(**kw):
    FakeClient.instances = []
    FakeClient.fail_connect = 0
    FakeClient.fail_publish_after = -1
    link = MqttLink("dev-1", "broker.local", client_factory=FakeClient, boot_epoch=3, **kw)
    buf = Buffer()
    link.add_stream("env", buf)
    return link, buf


def test_topic_layout():
    eq(topic_for("dev-1", "env"), b"headwater/dev-1/env")
    for bad in (("a/b", "env"), ("dev", "x+"), ("dev", "#"), ("", "env")):
        try:
            topic_for(*bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (bad,))


def test_publishes_qos1_and_drops_only_after_puback():
    link, buf = _link()
    link.push("env", b"\xa1at\x01")
    link.push("env", b"\xa1at\x02")
    eq(link.poll(0), 2)
    eq(FakeClient.instances[0].published[0], (b"headwater/dev-1/env", b"\xa1at\x01", False, 1))
    eq(len(buf), 0)


def test_failed_publish_keeps_the_record_and_backs_off():
    link, buf = _link(min_backoff_ms=100)
    link.push("env", b"a")
    link.push("env", b"b")
    FakeClient.fail_publish_after = 1
    eq(link.poll(0), 1)
    eq(len(buf), 1)
    check(link.client is None)
    eq(link.poll(10), 0)  # backing off
    FakeClient.fail_publish_after = -1
    eq(link.poll(200), 1)
    eq(len(buf), 0)
    eq(link.stats["connects"], 2)


def test_reconnect_backoff_grows_and_is_capped():
    link, _buf = _link(min_backoff_ms=100, max_backoff_ms=400)
    FakeClient.fail_connect = 10
    now = 0
    times = []
    while now < 8000:
        before = len(FakeClient.instances)
        link.poll(now)
        if len(FakeClient.instances) > before:
            times.append(now)
        now += 10
    eq(len(times), 11)  # 10 refused, then connected
    gaps = [b - a for a, b in zip(times, times[1:])]
    check(max(gaps) <= 410, "cap %r" % gaps)
    check(min(gaps[3:]) >= 200, "growth %r" % gaps)  # jitter keeps at least half
    eq(link._backoff, 100)  # reset once connected


def test_tls_on_port_8883():
    link, _buf = _link()
    check(not link.tls)
    link = MqttLink("dev-1", "b", port=8883, client_factory=FakeClient)
    check(link.tls)
    link.poll(0)
    check("ssl" in FakeClient.instances[-1].kw)
