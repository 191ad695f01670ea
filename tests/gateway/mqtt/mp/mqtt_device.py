# A MicroPython device for the gateway's end-to-end tests and bench/mqtt_device.py: the
# firmware's Buffer and MqttLink with the real umqtt.simple.
#
#   micropython -X heapsize=64k mqtt_device.py HOST PORT DEVICE COUNT EPOCH PERIOD_MS [PACK]
#
# PACK 0 (the default): one reading a message, CBOR with the sequence fields the
# application puts in itself ({"d", "e", "s", "v"}). PACK > 0: the link packs up to
# PACK readings ({"t", "v"}) into one message and adds the sequence fields itself.
# PERIOD_MS 0 makes readings as fast as the buffer takes them.
#
# Prints "confirmed N" whenever the broker has PUBACKed more readings (the link then
# drops them from its buffer), then "published MESSAGES ELAPSED_MS LINK_ERRORS" and
# "done N".
import sys
import time

from headwater import cbor
from headwater.buffer import Buffer
from headwater.mqtt_link import MqttLink

T0 = 1700000000000


def main():
    host, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count, epoch, period = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    pack = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    link = MqttLink(device, host, port=port, boot_epoch=epoch, keepalive=30,
                    min_backoff_ms=50, max_backoff_ms=500, max_batch=8, pack=pack)
    buf = Buffer(max_count=64, max_bytes=4096)
    link.add_stream("temperature", buf)
    made = 0
    confirmed = 0
    start = time.ticks_ms()
    next_reading = start
    while confirmed < count:
        now = time.ticks_ms()
        while made < count and time.ticks_diff(now, next_reading) >= 0:
            if pack:
                reading = {"t": T0 + made, "v": made}
            else:
                reading = {"d": device, "e": epoch, "s": buf.next_seq, "v": made}
            if link.push("temperature", cbor.dumps(reading)) < 0:
                break  # buffer full: the reading waits for room
            made += 1
            # Readings that fell due while a publish blocked are made now, as a timer
            # that sampled meanwhile would have them.
            next_reading = time.ticks_add(next_reading, period) if period else now
        sent = link.poll(now)
        if sent:
            confirmed += sent
            print("confirmed", confirmed)
        else:
            time.sleep_ms(1)
    print("published", link.stats["published"], time.ticks_diff(time.ticks_ms(), start),
          link.stats["errors"])
    print("done", confirmed)


main()
