"""MQTT over WebSocket (wss://HOST:PORT/mqtt) with paho-mqtt: a device publishes and
subscribes through the HTTPS listener.

Usage: mqtt_paho_ws.py HOST PORT DEVICE_ID SECRET CA_FILE
"""

import ssl
import sys
import threading

import paho.mqtt.client as mqtt

HOST, PORT, DEVICE, SECRET, CA = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
TOPIC = f"devices/{DEVICE}/ws"

got = threading.Event()
subscribed = threading.Event()
inbox = []

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-1", protocol=mqtt.MQTTv5, transport="websockets")
c.ws_set_options(path="/mqtt")
# The server's own self-signed certificate is the trust anchor; it names no host to check.
c.tls_set(ca_certs=CA, cert_reqs=ssl.CERT_REQUIRED)
c.tls_insecure_set(True)
c.username_pw_set(DEVICE, SECRET)
c.on_subscribe = lambda cl, u, mid, rc, p: subscribed.set()


def on_message(cl, userdata, msg):
    inbox.append(msg.payload)
    got.set()


c.on_message = on_message
c.connect(HOST, PORT, keepalive=30)
c.loop_start()
c.subscribe(TOPIC, qos=1)
if not subscribed.wait(10):
    print("FAIL: no SUBACK over WebSocket")
    sys.exit(1)
c.publish(TOPIC, b"over websocket", qos=1).wait_for_publish(10)
if not got.wait(10) or inbox != [b"over websocket"]:
    print(f"FAIL: got {inbox}")
    sys.exit(1)
c.disconnect()
c.loop_stop()
print("OK", flush=True)
