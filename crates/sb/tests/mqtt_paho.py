"""MQTT 5 features against Switchboard with paho-mqtt (a client nobody here wrote).

Usage: mqtt_paho.py HOST PORT DEVICE_ID SECRET
Exits 0 after printing OK, or non-zero naming what failed.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT, DEVICE, SECRET = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
NS = f"devices/{DEVICE}"


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def client(name, version=mqtt.MQTTv5, clean=True, expiry=None):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=name,
        protocol=version,
        clean_session=None if version == mqtt.MQTTv5 else clean,
    )
    c.username_pw_set(DEVICE, SECRET)
    c.inbox = []
    c.got = threading.Event()
    c.subscribed = threading.Event()
    c.acks = {}

    def on_message(cl, userdata, msg):
        cl.inbox.append(msg)
        cl.got.set()

    def on_subscribe(cl, userdata, mid, reason_codes, properties):
        cl.suback = reason_codes
        cl.subscribed.set()

    def on_publish(cl, userdata, mid, reason_code, properties):
        cl.acks[mid] = reason_code

    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.on_publish = on_publish
    props = None
    if version == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        if expiry is not None:
            props.SessionExpiryInterval = expiry
        c.connect(HOST, PORT, keepalive=30, clean_start=clean, properties=props)
    else:
        c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    return c


def subscribe(c, topic, qos=1, props=None):
    c.subscribed.clear()
    c.subscribe(topic, qos=qos, properties=props)
    if not c.subscribed.wait(10):
        fail(f"no SUBACK for {topic}")


def wait_for(c, n, timeout=10):
    deadline = time.time() + timeout
    while len(c.inbox) < n and time.time() < deadline:
        time.sleep(0.02)
    return c.inbox[:n]


def stop(*cs):
    for c in cs:
        c.disconnect()
        c.loop_stop()


# Request/response: the response topic, correlation data and user properties go through.
responder = client("responder")
subscribe(responder, f"{NS}/req")


def answer(cl, userdata, msg):
    p = msg.properties
    reply = Properties(PacketTypes.PUBLISH)
    reply.CorrelationData = p.CorrelationData
    reply.UserProperty = [("echo", dict(p.UserProperty).get("k", "?"))]
    cl.publish(p.ResponseTopic, b"pong:" + msg.payload, qos=1, properties=reply)


responder.on_message = answer
requester = client("requester")
subscribe(requester, f"{NS}/resp")
req = Properties(PacketTypes.PUBLISH)
req.ResponseTopic = f"{NS}/resp"
req.CorrelationData = b"corr-42"
req.UserProperty = [("k", "v1")]
requester.publish(f"{NS}/req", b"ping", qos=1, properties=req).wait_for_publish(10)
got = wait_for(requester, 1)
if not got:
    fail("no response to the request")
r = got[0]
if r.payload != b"pong:ping" or r.properties.CorrelationData != b"corr-42":
    fail(f"wrong response {r.payload!r} {r.properties}")
if ("echo", "v1") not in r.properties.UserProperty:
    fail(f"user property lost: {r.properties}")
stop(responder, requester)

# Shared subscription: every message to exactly one member.
w1, w2 = client("worker-1"), client("worker-2")
for w in (w1, w2):
    subscribe(w, f"$share/pool/{NS}/work")
pub = client("producer")
for i in range(20):
    pub.publish(f"{NS}/work", f"job{i}".encode(), qos=1).wait_for_publish(10)
time.sleep(1.0)
jobs = sorted(m.payload.decode() for m in w1.inbox + w2.inbox)
if jobs != sorted(f"job{i}" for i in range(20)):
    fail(f"shared subscription delivered {jobs}")
if not w1.inbox or not w2.inbox:
    fail("one worker got nothing")
stop(w1, w2)

# Subscription identifiers come back on matching messages.
tagged = client("tagged")
sp = Properties(PacketTypes.SUBSCRIBE)
sp.SubscriptionIdentifier = 77
subscribe(tagged, f"{NS}/tagged/#", props=sp)
pub.publish(f"{NS}/tagged/x", b"t", qos=1).wait_for_publish(10)
got = wait_for(tagged, 1)
if not got or got[0].properties.SubscriptionIdentifier != [77]:
    fail(f"subscription identifier missing: {got and got[0].properties}")
stop(tagged)

# A topic alias set on one publish stands for its topic on the next.
aliased = client("aliased")
subscribe(aliased, f"{NS}/alias")
a1 = Properties(PacketTypes.PUBLISH)
a1.TopicAlias = 3
pub.publish(f"{NS}/alias", b"first", qos=1, properties=a1).wait_for_publish(10)
a2 = Properties(PacketTypes.PUBLISH)
a2.TopicAlias = 3
pub.publish("", b"second", qos=1, properties=a2).wait_for_publish(10)
got = wait_for(aliased, 2)
if [m.payload for m in got] != [b"first", b"second"] or got[1].topic != f"{NS}/alias":
    fail(f"topic alias: {[(m.topic, m.payload) for m in got]}")
stop(aliased)

# Message expiry: a message that expires while its persistent session is away is not
# delivered; one that does not expire is.
away = client("away", clean=True, expiry=300)
subscribe(away, f"{NS}/expiring")
stop(away)
short = Properties(PacketTypes.PUBLISH)
short.MessageExpiryInterval = 1
pub.publish(f"{NS}/expiring", b"stale", qos=1, properties=short).wait_for_publish(10)
pub.publish(f"{NS}/expiring", b"fresh", qos=1).wait_for_publish(10)
time.sleep(2.2)
back = client("away", clean=False, expiry=300)
got = wait_for(back, 1, timeout=3)
time.sleep(0.5)
if [m.payload for m in back.inbox] != [b"fresh"]:
    fail(f"message expiry: {[m.payload for m in back.inbox]}")
stop(back)

# A publish outside the namespace gets "not authorized" (0x87) in its PUBACK.
info = pub.publish("elsewhere/topic", b"no", qos=1)
info.wait_for_publish(10)
time.sleep(0.3)
rc = pub.acks.get(info.mid)
if rc is None or rc.value != 0x87:
    fail(f"expected PUBACK 0x87, got {rc}")

# QoS 2 round trip in MQTT 3.1.1 with paho as well.
v3 = client("v3-sub", version=mqtt.MQTTv311)
subscribe(v3, f"{NS}/v3", qos=2)
pub.publish(f"{NS}/v3", b"exactly", qos=2).wait_for_publish(10)
got = wait_for(v3, 1)
time.sleep(0.3)
if [m.payload for m in v3.inbox] != [b"exactly"] or got[0].qos != 2:
    fail(f"v3 QoS 2: {[(m.payload, m.qos) for m in v3.inbox]}")
stop(v3, pub)
print("OK", flush=True)
