"""Real parts for the runtime tests: a redis-server of our own on a free port, the ml-infer queue
as the broker fills it (python bullmq Queue, same envelope, job id and options), and worker
processes started as the ml-bridge starts them (python -m fleetwire_ml with its environment)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from bullmq import Job, Queue
from fleetwire_ml.contracts import ML_INFER_CLASS, Contracts, load_contracts

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = PACKAGE_ROOT / "models"
MAKE_SLOW_MODEL = PACKAGE_ROOT / "tools" / "make_slow_model.py"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def contracts() -> Contracts:
    return load_contracts()


def spawn_redis() -> tuple[subprocess.Popen, str]:
    """A redis-server of our own on a free port, without persistence; returns it and its URL once it answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    proc, url = spawn_redis()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The test's Redis, emptied: every test starts without jobs, heartbeats or models of another."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def shipped_models_with_slow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models plus the `slow` test model (compute takes input[0][0] ms), built once."""
    models = tmp_path_factory.mktemp("shipped") / "models"
    shutil.copytree(SHIPPED_MODELS, models)
    subprocess.run([sys.executable, str(MAKE_SLOW_MODEL), str(models)], check=True, stdout=subprocess.DEVNULL)
    return models


@pytest.fixture
def models_dir(tmp_path: Path, shipped_models_with_slow: Path) -> Path:
    """A models directory of the test's own, which it may change (new versions, reloads)."""
    models = tmp_path / "models"
    shutil.copytree(shipped_models_with_slow, models)
    return models


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Finished:
    state: str  # "completed" or "failed"
    returnvalue: Any
    failed_reason: str | None
    attempts_made: int
    attempts_started: int


class MlQueue:
    """The producer side of ml-infer, shaped like the broker's (broker/src/ingress.ts route)."""

    def __init__(self, queue: Queue, contracts: Contracts):
        self.queue = queue
        self.contracts = contracts

    async def add_request(self, device_id: str, request: dict[str, Any], deadline_in_ms: int = 2000) -> str:
        received_at = now_ms()
        envelope = {
            "cid": request["cid"],
            "device_id": device_id,
            "topic_class": ML_INFER_CLASS,
            "payload": request,
            "received_at": received_at,
            "node": "test-node",
            "deadline_at": received_at + deadline_in_ms,
        }
        return await self.add_data(f"{device_id}.{request['cid'].replace(':', '_')}", envelope)

    async def add_data(self, job_id: str, data: Any) -> str:
        await self.queue.add(ML_INFER_CLASS, data, {"jobId": job_id, **self.contracts.ml_job_options})
        return job_id

    async def state(self, job_id: str) -> str:
        return await self.queue.getJobState(job_id)

    async def finished(self, job_id: str, timeout: float = 10) -> Finished:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = await Job.fromId(self.queue, job_id)
            if job is not None and job.finishedOn:
                state = "completed" if job.returnvalue is not None else "failed"
                return Finished(state, job.returnvalue, job.failedReason, job.attemptsMade, job.attemptsStarted)
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish within {timeout}s (state {await self.state(job_id)})")


@pytest.fixture
async def ml_queue(redis_url: str, contracts: Contracts) -> AsyncIterator[MlQueue]:
    queue = Queue(contracts.ml_queue, {"connection": redis_url, "prefix": contracts.prefix})
    yield MlQueue(queue, contracts)
    await queue.close()


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, worker_id: str, log_path: Path):
        self.proc = proc
        self.id = worker_id
        self.log_path = log_path

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def worker_env(redis_url: str, models_dir: Path, worker_id: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_")}
    env.update({"REDIS_URL": redis_url, "ML_MODELS_DIR": str(models_dir), "ML_WORKER_ID": worker_id, **extra})
    return env


@pytest.fixture
def start_worker(redis_url: str, models_dir: Path, tmp_path: Path, contracts: Contracts) -> Iterator[Any]:
    """Starts worker processes; returns when each has written its first heartbeat. Stopped at teardown."""
    started: list[WorkerProcess] = []
    client = redis.Redis.from_url(redis_url)

    def start(worker_id: str = "w1", **env: str) -> WorkerProcess:
        log_path = tmp_path / f"{worker_id}.log"
        with log_path.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetwire_ml"], env=worker_env(redis_url, models_dir, worker_id, **env), stdout=out
            )
        worker = WorkerProcess(proc, worker_id, log_path)
        started.append(worker)
        deadline = time.monotonic() + 20
        while not client.exists(contracts.key("worker", worker_id=worker_id)):
            if proc.poll() is not None:
                raise AssertionError(f"worker {worker_id} exited with {proc.returncode}: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {worker_id} wrote no heartbeat: {log_path.read_text()}")
            time.sleep(0.05)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
            try:
                worker.proc.wait(15)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
    client.close()
