"""Starting the worker process: settings it refuses, and models it needs, say so and exit 2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bullmq import Queue
from conftest import MlQueue, _free_port, spawn_redis, worker_env


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetwire_ml"], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("REDIS_URL", "", "REDIS_URL"),
        ("REDIS_URL", "http://localhost", "REDIS_URL"),
        ("ML_WORKER_CONCURRENCY", "many", "ML_WORKER_CONCURRENCY"),
        ("ML_WORKER_HEARTBEAT_MS", "0", "ML_WORKER_HEARTBEAT_MS"),
        ("ML_MODELS_DIR", "/nonexistent/models", "ML_MODELS_DIR"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(redis_url, models_dir, setting, value, named):
    env = worker_env(redis_url, models_dir, "w-bad", **{setting: value})
    done = run_worker(env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr


def test_no_loadable_model_exits_2(redis_url, tmp_path: Path):
    empty = tmp_path / "models"
    (empty / "anomaly" / "1").mkdir(parents=True)  # a version directory without its files
    done = run_worker(worker_env(redis_url, empty, "w-empty"))
    assert done.returncode == 2
    assert "no model loaded" in done.stderr


def test_an_unreachable_redis_is_a_crash_the_supervisor_restarts(models_dir):
    closed_port = _free_port()
    done = run_worker(worker_env(f"redis://127.0.0.1:{closed_port}", models_dir, "w-no-redis"))
    assert done.returncode not in (0, 2)


async def test_sigterm_while_redis_goes_away_still_exits_within_the_grace(models_dir, contracts):
    server, url = spawn_redis()
    try:
        queue = MlQueue(Queue(contracts.ml_queue, {"connection": url, "prefix": contracts.prefix}), contracts)
        for i in range(2000):
            await queue.add_request("dev-1", {"cid": f"c{i}", "model": "anomaly", "input": [[21.5, 40.1, 0.02, 1.3]]}, 60_000)
        await queue.queue.close()
        env = worker_env(url, models_dir, "w-orphaned", ML_MAX_TIMEOUT_MS="2000")
        proc = subprocess.Popen([sys.executable, "-m", "fleetwire_ml"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(2)  # started and busy with the queue
        proc.terminate()
        server.kill()
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 10)
        assert time.monotonic() - started < 5
        assert code in (0, 1)  # 0 when it finished before Redis was gone, 1 when the grace ran out
    finally:
        server.kill()
        server.wait()
