"""Paho Python, set up exactly as README.md shows (examples/paho_device.py), against a
real `fleetwire up`: the device trades its API key for a token and connects over
WebSocket with the token in the subprotocol list."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from types import ModuleType

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, Stack


class Connack:
    """The CONNACK reason code a client received, waited for with a deadline."""

    def __init__(self, client: mqtt.Client) -> None:
        self.code: mqtt.ReasonCode | None = None
        self._arrived = threading.Event()
        client.on_connect = self._on_connect

    def _on_connect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason_code: mqtt.ReasonCode, _props: object) -> None:
        self.code = reason_code
        self._arrived.set()

    def wait(self, timeout_s: float = 10) -> mqtt.ReasonCode:
        assert self._arrived.wait(timeout_s), "no CONNACK"
        assert self.code is not None
        return self.code


def connect(paho_device: ModuleType, stack: Stack, device_id: str, token: str) -> tuple[mqtt.Client, mqtt.ReasonCode]:
    client = paho_device.make_client(device_id, token)
    connack = Connack(client)
    client.connect("127.0.0.1", stack.port, keepalive=30)
    client.loop_start()
    return client, connack.wait()


def stop(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_the_readme_paho_setup_connects_and_its_qos1_heartbeat_is_acknowledged(stack: Stack, paho_device: ModuleType) -> None:
    device_id, api_key = stack.register_device()
    token = stack.device_token(api_key)
    client, code = connect(paho_device, stack, device_id, token)
    try:
        assert code == 0, f"CONNACK {code}"
        beat = {"seq": 1, "uptime_s": 5, "rssi": -60, "heap_free": 150000, "fw": "paho-1.0.0"}
        info = client.publish(f"devices/{device_id}/heartbeat", json.dumps(beat), qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), "no PUBACK for the QoS 1 heartbeat"
    finally:
        stop(client)
    assert not any(token in line for line in stack.logs), "the token appeared in the server log"


def test_a_revoked_device_is_refused_with_connack_5_not_authorized(stack: Stack, paho_device: ModuleType) -> None:
    device_id, api_key = stack.register_device()
    token = stack.device_token(api_key)
    status, body = stack.api("DELETE", f"/v1/devices/{device_id}", token=stack.admin())
    assert status in (200, 204), body
    client, code = connect(paho_device, stack, device_id, token)
    stop(client)
    assert code.is_failure
    assert str(code) == "Not authorized"  # MQTT 3.1.1 CONNACK return code 5


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c"])
def test_a_malformed_token_is_refused_with_connack_4(stack: Stack, paho_device: ModuleType, token: str) -> None:
    device_id, _ = stack.register_device()
    client, code = connect(paho_device, stack, device_id, token)
    stop(client)
    assert str(code) == "Bad user name or password"  # MQTT 3.1.1 CONNACK return code 4


def test_the_example_script_connects_and_says_so(stack: Stack) -> None:
    device_id, api_key = stack.register_device()
    token = stack.device_token(api_key)
    script = ROOT / "examples" / "paho_device.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), device_id, token, f"ws://127.0.0.1:{stack.port}/mqtt"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == f"connected as {device_id}", first
    finally:
        proc.send_signal(signal.SIGINT)  # the script's Ctrl-C path: disconnect and exit 0
        assert proc.wait(timeout=10) == 0
