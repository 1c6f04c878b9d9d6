#!/usr/bin/env python3
"""A minimal device in Python with Paho (paho-mqtt 2.x), for the README.

    python examples/paho_device.py <device-id> <token> [ws://localhost:8080/mqtt]

Connects with its token in the WebSocket subprotocol list, sends a heartbeat every
10 s at QoS 1 and prints what arrives on its command and sys topics. The lines between
the ``readme:`` markers are quoted in README.md; e2e/python/tests/test_paho_client.py
runs them against a real stack, and a vitest test keeps the quote identical.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt


def make_client(device_id: str, token: str) -> mqtt.Client:
    """A Paho client for one device, with its token offered beside the ``mqtt`` subprotocol."""
    # readme:start
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=device_id,  # a device's client id is its device id
        transport="websockets",
        protocol=mqtt.MQTTv311,
    )
    # Paho sends its own "Sec-Websocket-Protocol: mqtt" too; Fleetwire takes both headers.
    client.ws_set_options(path="/mqtt", headers={"Sec-WebSocket-Protocol": "mqtt, auth." + token})
    # readme:end
    return client


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python examples/paho_device.py <device-id> <token> [ws://localhost:8080/mqtt]", file=sys.stderr)
        return 2
    device_id, token = argv[0], argv[1]
    url = urlsplit(argv[2] if len(argv) > 2 else "ws://localhost:8080/mqtt")
    client = make_client(device_id, token)
    if url.scheme == "wss":
        client.tls_set()  # the system's CAs; tls_set(ca_certs="ca.pem") for a private CA

    def on_connect(client: mqtt.Client, _userdata: object, _flags: object, reason_code: object, _props: object) -> None:
        if reason_code != 0:
            print(f"refused: {reason_code}", file=sys.stderr)
            client.disconnect()
            return
        print(f"connected as {device_id}")
        client.subscribe([(f"devices/{device_id}/cmd", 1), (f"devices/{device_id}/sys", 1)])

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: print(f"{msg.topic}: {msg.payload.decode(errors='replace')}")
    client.connect(url.hostname or "localhost", url.port or (443 if url.scheme == "wss" else 80), keepalive=60)
    # Ctrl-C (or SIGTERM) only sets a flag: a KeyboardInterrupt raised inside publish() could
    # leave one of Paho's locks held, and the disconnect below would then wait forever.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    client.loop_start()
    started, seq = time.monotonic(), 0
    while not stop.is_set() and (client.is_connected() or seq == 0):
        beat = {"seq": seq, "uptime_s": int(time.monotonic() - started), "rssi": -60, "heap_free": 150000, "fw": "example-1.0.0"}
        client.publish(f"devices/{device_id}/heartbeat", json.dumps(beat), qos=1)
        seq += 1
        stop.wait(10)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
