# ruff: noqa: UP031, RUF007, B905 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
import gc
import json
import os

from headwater import cbor
from headwater.buffer import Buffer
from headwater.mqtt_link import MqttLink, envelope_prefix, topic_for
from support import check, eq, unhex, untag

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."


def mqtt_vectors():
    # tests/gateway/mqtt/mqtt_vectors.json: the gateway tests decode the same payloads.
    path = os.getenv("HW_MQTT_VECTORS") or (_here + "/../../gateway/mqtt/mqtt_vectors.json")
    with open(path) as f:
        out = json.load(f)["cbor"]
    gc.collect()
    return out


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


def _link(device="dev-1", buf=None, boot_epoch=3, **kw):
    FakeClient.instances = []
    FakeClient.fail_connect = 0
    FakeClient.fail_publish_after = -1
    link = MqttLink(device, "broker.local", client_factory=FakeClient, boot_epoch=boot_epoch,
                    **kw)
    buf = buf if buf is not None else Buffer()
    link.add_stream("env", buf)
    return link, buf


def _published():
    return [m for c in FakeClient.instances for m in c.published]


def _envelope(payload):
    doc = cbor.loads(payload)
    eq(sorted(doc), ["d", "e", "r", "s"])  # (the key order is checked by the golden vectors)
    return doc


def test_topic_layout():
    eq(topic_for("dev-1", "env"), b"headwater/dev-1/env")
    for bad in (("a/b", "env"), ("dev", "x+"), ("dev", "#"), ("", "env")):
        try:
            topic_for(*bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (bad,))


def test_unpacked_publishes_each_reading_as_pushed():
    link, buf = _link(pack=0)
    link.push("env", b"\xa1at\x01")
    link.push("env", b"\xa1at\x02")
    eq(link.poll(0), 2)
    eq(FakeClient.instances[0].published[0], (b"headwater/dev-1/env", b"\xa1at\x01", False, 1))
    eq(len(FakeClient.instances[0].published), 2)
    eq(len(buf), 0)


def test_golden_vectors():
    for v in mqtt_vectors():
        buf = Buffer(max_bytes=1024)
        buf.first_seq = buf.next_seq = v["first_seq"]
        link, _ = _link(v["device"], buf, boot_epoch=v["epoch"])
        link.streams = {}
        link.add_stream(v["stream"], buf)
        for r in v["readings"]:
            raw = unhex(r["hex"])
            doc = untag(r["doc"])
            eq(cbor.loads(raw), doc)
            if len(doc) == 1:  # (MicroPython's dicts keep no insertion order)
                eq(cbor.dumps(doc), raw)  # the firmware encodes readings this way
            link.push(v["stream"], raw)
        eq(link.poll(0), len(v["readings"]))
        eq(_published(), [(v["topic"].encode(), unhex(v["payload"]), False, 1)])
        eq(buf.first_seq, (v["first_seq"] + len(v["readings"])) & 0x7FFFFFFF)
        v = buf = link = None
        gc.collect()


def test_envelope_prefix_is_a_four_pair_map_with_d():
    eq(envelope_prefix("dev-1"), b"\xa4\x61d\x65dev-1")
    eq(envelope_prefix("x" * 24)[:5], b"\xa4\x61d\x78\x18")
    for bad in ("", "x" * 129):
        try:
            envelope_prefix(bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % bad)


def test_packs_up_to_pack_readings_per_message():
    link, buf = _link(pack=3)
    for i in range(7):
        link.push("env", cbor.dumps({"v": i}))
    eq(link.poll(0), 7)
    docs = [_envelope(m[1]) for m in _published()]
    eq([(d["e"], d["s"], [r["v"] for r in d["r"]]) for d in docs],
       [(3, 0, [0, 1, 2]), (3, 3, [3, 4, 5]), (3, 6, [6])])
    eq(link.stats["published"], 3)
    eq(link.stats["readings"], 7)
    eq(len(buf), 0)


def test_max_batch_counts_messages():
    link, buf = _link(pack=2, max_batch=2)
    for i in range(7):
        link.push("env", cbor.dumps({"v": i}))
    eq(link.poll(0), 4)
    eq(len(buf), 3)
    eq(link.poll(1), 3)


def test_failed_publish_keeps_every_reading_of_the_message():
    link, buf = _link(pack=4, min_backoff_ms=100)
    for i in range(6):
        link.push("env", cbor.dumps({"v": i}))
    FakeClient.fail_publish_after = 1
    eq(link.poll(0), 4)  # the first message; the second one failed
    eq(len(buf), 2)
    eq(buf.first_seq, 4)
    for i in range(6, 9):
        link.push("env", cbor.dumps({"v": i}))
    FakeClient.fail_publish_after = -1
    eq(link.poll(200), 5)
    docs = [_envelope(m[1]) for m in _published()]
    # Packed again from the oldest unconfirmed reading, with what arrived meanwhile.
    eq([(d["s"], [r["v"] for r in d["r"]]) for d in docs],
       [(0, [0, 1, 2, 3]), (4, [4, 5, 6, 7]), (8, [8])])


def test_message_size_is_bounded_and_a_big_reading_goes_alone():
    link, buf = _link(max_message=256)
    buf = Buffer(max_bytes=2048)
    link.streams = {}
    link.add_stream("env", buf)
    for i in range(10):
        link.push("env", cbor.dumps({"v": i, "pad": "x" * 90}))
    link.push("env", cbor.dumps({"v": 10, "pad": "y" * 400}))
    link.push("env", cbor.dumps({"v": 11}))
    eq(link.poll(0), 12)
    sizes = [len(m[1]) for m in _published()]
    docs = [_envelope(m[1]) for m in _published()]
    eq([[r["v"] for r in d["r"]] for d in docs], [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10],
                                                  [11]])
    check(max(sizes[:5] + sizes[6:]) <= 256, "sizes %r" % sizes)
    check(sizes[5] > 400, "the big reading %r" % sizes)


def test_readings_of_different_boot_epochs_never_share_a_message():
    link, buf = _link(boot_epoch=5)
    buf.append(cbor.dumps({"v": 0}), 4)  # left over from the previous boot (a spool)
    buf.append(cbor.dumps({"v": 1}), 4)
    link.push("env", cbor.dumps({"v": 2}))
    eq(link.poll(0), 3)
    eq([(d["e"], d["s"], len(d["r"])) for d in (_envelope(m[1]) for m in _published())],
       [(4, 0, 2), (5, 2, 1)])


def test_sequence_wraps_inside_a_message():
    buf = Buffer()
    buf.first_seq = buf.next_seq = 0x7FFFFFFF
    link, _ = _link(buf=buf)
    for i in range(3):
        link.push("env", cbor.dumps({"v": i}))
    eq(link.poll(0), 3)
    eq(_envelope(_published()[0][1])["s"], 0x7FFFFFFF)
    eq(buf.first_seq, 2)


def test_bounds_are_checked():
    for kw in ({"pack": -1}, {"pack": 257}, {"max_message": 10}):
        try:
            MqttLink("d", "b", client_factory=FakeClient, **kw)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (kw,))


def test_failed_publish_keeps_the_record_and_backs_off():
    link, buf = _link(pack=0, min_backoff_ms=100)
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
