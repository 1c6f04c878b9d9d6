"""The real stack for Python client tests: `fleetwire up` as a child process on a free
port, with a private data folder and the Redis at REDIS_URL, an admin of its own, plus
the README's Paho example imported from examples/paho_device.py. Nothing is flushed:
device ids and the admin's email are unique per run, so a Redis in use is fine."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
CLI = ROOT / "cli" / "dist" / "main.js"
ADMIN = {"email": f"py-e2e-{secrets.token_hex(4)}@example.com", "password": "py-e2e-admin-passphrase"}


@dataclass
class Stack:
    port: int
    logs: list[str] = field(default_factory=list)
    _admin_token: str | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, body: object | None = None, token: str | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if token:
            req.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                text = res.read().decode()
                return res.status, json.loads(text) if text else {}
        except urllib.error.HTTPError as err:
            text = err.read().decode()
            return err.code, json.loads(text) if text else {}

    def admin(self) -> str:
        if self._admin_token is None:
            status, body = self.api("POST", "/v1/auth/login", ADMIN)
            assert status == 200, body
            self._admin_token = body["access_token"]
        return self._admin_token

    def register_device(self) -> tuple[str, str]:
        """A new device with a unique id; returns (device id, API key)."""
        device_id = f"py-{secrets.token_hex(4)}"
        status, body = self.api("POST", "/v1/devices", {"id": device_id, "type": "esp32-s3"}, self.admin())
        assert status == 201, body
        return device_id, body["api_key"]

    def device_token(self, api_key: str) -> str:
        status, body = self.api("POST", "/v1/devices/token", {"api_key": api_key})
        assert status == 200, body
        return body["token"]


def _read_logs(proc: subprocess.Popen[str], stack_logs: list[str], port_found: threading.Event, port: list[int]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        stack_logs.append(line)
        if not port_found.is_set():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "broker listening":
                port.append(int(entry["port"]))
                port_found.set()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    node = shutil.which("node")
    if node is None or not CLI.exists():
        pytest.fail(f"needs node and a built {CLI.relative_to(ROOT)}: run `make build` first")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
        "FLEETWIRE_DATA_DIR": str(tmp_path_factory.mktemp("fleetwire-data")),
        "PORT": "0",
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "info",
        # Every test connects from 127.0.0.1; the production limits per address would throttle the suite.
        "LOGIN_PER_IP": "1000",
        "BROKER_CONNECT_ATTEMPTS_PER_IP": "1000",
        "BROKER_SHUTDOWN_SPREAD_MS": "200",
        "BROKER_SHUTDOWN_TIMEOUT_MS": "3000",
    }
    # The CLI, not FLEETWIRE_ADMIN_EMAIL: that one only acts when the Redis holds no user yet.
    created = subprocess.run(
        [node, str(CLI), "users", "create", "--email", ADMIN["email"], "--role", "admin", "--password-stdin"],
        input=ADMIN["password"] + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if created.returncode != 0:
        pytest.fail(f"fleetwire users create failed (is Redis at {env['REDIS_URL']}?):\n{created.stderr}")
    proc = subprocess.Popen([node, str(CLI), "up"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs: list[str] = []
    port_found = threading.Event()
    port: list[int] = []
    threading.Thread(target=_read_logs, args=(proc, logs, port_found, port), daemon=True).start()
    deadline = time.monotonic() + 30
    while not port_found.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            stderr = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"fleetwire up did not start (exit {proc.returncode}):\n{stderr}\n{''.join(logs[-20:])}")
    try:
        yield Stack(port=port[0], logs=logs)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def paho_device() -> ModuleType:
    """examples/paho_device.py, the file README.md quotes."""
    spec = importlib.util.spec_from_file_location("paho_device", ROOT / "examples" / "paho_device.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
