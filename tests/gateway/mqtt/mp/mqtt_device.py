# A MicroPython device for the gateway's end-to-end test: the firmware's Buffer and
# MqttLink with the real umqtt.simple, publishing CBOR readings with the sequence
# fields the gateway turns into idempotent batches ({"d", "e", "s", "v"}).
#
#   micropython -X heapsize=64k mqtt_device.py HOST PORT DEVICE COUNT EPOCH PERIOD_MS
#
# Prints "confirmed N" whenever the broker has PUBACKed more readings (the link then
# drops them from its buffer), and "done N" at the end.
import sys
import time

from headwater import cbor
from headwater.buffer import Buffer
from headwater.mqtt_link import MqttLink


def main():
    host, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count, epoch, period = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    link = MqttLink(device, host, port=port, boot_epoch=epoch, keepalive=30,
                    min_backoff_ms=50, max_backoff_ms=500, max_batch=8)
    buf = Buffer(max_count=64, max_bytes=4096)
    link.add_stream("temperature", buf)
    made = 0
    confirmed = 0
    next_reading = time.ticks_ms()
    while confirmed < count:
        now = time.ticks_ms()
        if made < count and time.ticks_diff(now, next_reading) >= 0:
            next_reading = time.ticks_add(next_reading, period)
            reading = {"d": device, "e": epoch, "s": buf.next_seq, "v": made}
            if link.push("temperature", cbor.dumps(reading)) >= 0:
                made += 1
        sent = link.poll(now)
        if sent:
            confirmed += sent
            print("confirmed", confirmed)
        else:
            time.sleep_ms(1)
    print("done", confirmed)


main()
