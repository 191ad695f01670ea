# ruff: noqa: SIM115 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
# A device for the end-to-end tests and the benchmark, run by the MicroPython
# unix port on one end of a pty. Configuration from the environment:
#   HW_TTY      serial device path          HW_COUNT   records to send
#   HW_ID       device id                   HW_RATE    records per second (0: as fast as possible)
#   HW_EPOCH    boot-epoch file             HW_SPOOL   spool file ("" for RAM only)
#   HW_PAD      bytes of padding per record (a 32-byte reading by default)
# Prints "D <first seq> <count>" for every acknowledged range, "DONE <n>" at the end.
import os
import time

from headwater import cbor
from headwater.buffer import Buffer
from headwater.serial_link import SerialLink, boot_epoch


class PtyUart:
    def __init__(self, path):
        self.f = open(path, "r+b")

    def readinto(self, buf):
        try:
            n = self.f.readinto(buf)
        except OSError:
            return None
        return n or None

    def write(self, buf):
        return self.f.write(buf)


def delivered(stream, first, n):
    print("D", first, n)


def main():
    count = int(os.getenv("HW_COUNT") or "100")
    rate = int(os.getenv("HW_RATE") or "0")
    pad = int(os.getenv("HW_PAD") or "16")
    spool = os.getenv("HW_SPOOL") or None
    epoch = boot_epoch(os.getenv("HW_EPOCH") or "/tmp/hw-epoch")
    buf = Buffer(max_count=256, max_bytes=12288, spool=spool, spool_max=1024 * 1024)
    link = SerialLink(
        PtyUart(os.getenv("HW_TTY")), os.getenv("HW_ID") or "dev-1", epoch, on_delivered=delivered
    )
    link.add_stream("env", buf)
    # Records made before a reboot come back from the spool; count on from there.
    made = buf.next_seq
    start = time.ticks_ms()
    print("START", epoch, made)
    filler = b"x" * pad
    while True:
        now = time.ticks_ms()
        due = count if rate == 0 else min(count, time.ticks_diff(now, start) * rate // 1000)
        while made < due:
            if link.push("env", cbor.dumps([made, filler])) < 0:
                break
            made += 1
        link.poll(now)
        if made >= count and len(buf) == 0:
            break
        if rate:
            time.sleep_ms(1)
    print("DONE", made)


main()
