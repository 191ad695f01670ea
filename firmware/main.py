# Example for an ESP32 or RP2040 board: read a sensor once a second and push
# each reading to the gateway over UART1 (or to a broker, see USE_MQTT).
# Copy firmware/headwater/ and this file to the board (mpremote cp, or mip).

import sys
import time

import machine

from headwater import cbor
from headwater.buffer import Buffer
from headwater.serial_link import SerialLink, boot_epoch

DEVICE_ID = "sensor-" + "".join("%02x" % b for b in machine.unique_id())
STREAM = "env"
PERIOD_MS = 1000
USE_MQTT = False  # True: publish through a broker instead (needs network setup)


def read_sensor(adc):
    # The RP2040's internal temperature sensor; replace with your sensor driver.
    volts = adc.read_u16() * 3.3 / 65535
    return {"t": round(27 - (volts - 0.706) / 0.001721, 2), "raw": adc.read_u16()}


def spool_path():
    try:
        import os

        os.stat("/")
        return "/headwater.spool"  # keep readings across resets and power loss
    except OSError:
        return None


def main():
    epoch = boot_epoch("/headwater.epoch")
    buf = Buffer(max_count=128, max_bytes=8192, spool=spool_path(), spool_max=256 * 1024)
    try:
        adc = machine.ADC(4)
    except (ValueError, TypeError):
        adc = machine.ADC(machine.Pin(34))  # ESP32: any ADC pin
    if USE_MQTT:
        from headwater.mqtt_link import MqttLink

        link = MqttLink(DEVICE_ID, "192.0.2.10", port=8883, boot_epoch=epoch)
        link.add_stream(STREAM, buf)
    else:
        # Pass the pins: ESP32's UART1 defaults to GPIO9/10, the SPI flash on most
        # modules (see firmware/README.md for the pins of each board).
        if "ESP32" in sys.implementation._machine:
            uart = machine.UART(2, baudrate=115200, tx=17, rx=16, timeout=0)
        else:
            uart = machine.UART(1, baudrate=115200, tx=machine.Pin(4), rx=machine.Pin(5),
                                timeout=0)
        link = SerialLink(uart, DEVICE_ID, epoch)
        link.add_stream(STREAM, buf)
    next_read = time.ticks_ms()
    while True:
        now = time.ticks_ms()
        if time.ticks_diff(now, next_read) >= 0:
            next_read = time.ticks_add(next_read, PERIOD_MS)
            link.push(STREAM, cbor.dumps(read_sensor(adc)))
        link.poll(now)
        time.sleep_ms(2)


main()
