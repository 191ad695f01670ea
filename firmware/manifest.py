# micropython-lib style manifest: freeze the library into a firmware build with
#   make BOARD=... FROZEN_MANIFEST=/path/to/firmware/manifest.py
metadata(description="Headwater device library: CBOR, record buffer, serial and MQTT links",
         version="0.1.0")

require("umqtt.simple")  # only mqtt_link needs it
package("headwater")
