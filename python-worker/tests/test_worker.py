"""The worker process against real Redis: what a device's request turns into on the ml-infer queue."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

READING = [21.5, 40.1, 0.02, 1.3]


def anomaly(cid: str, rows=None, **extra) -> dict:
    return {"cid": cid, "model": "anomaly", "input": rows if rows is not None else [READING], **extra}


async def test_a_request_completes_with_the_default_versions_output(start_worker, ml_queue):
    worker = start_worker()
    job_id = await ml_queue.add_request("dev-1", anomaly("c:1", [READING, [80.0, 5.0, 3.0, 9.0]]))
    assert job_id == "dev-1.c_1"  # the broker's job id: ':' in a cid becomes '_'

    done = await ml_queue.finished(job_id)

    assert done.state == "completed"
    result = done.returnvalue
    assert result["ok"] is True
    assert (result["cid"], result["device_id"], result["model"], result["worker"]) == ("c:1", "dev-1", "anomaly", worker.id)
    assert result["model_version"] == "2"  # the highest loaded version is the default
    assert result["batch_size"] >= 1 and result["compute_ms"] >= 0
    # One output value per input row, for every output of the model.
    assert result["output"] and all(len(values) == 2 for values in result["output"].values())


async def test_a_pinned_version_is_the_one_that_computes(start_worker, ml_queue):
    start_worker()
    pinned = await ml_queue.finished(await ml_queue.add_request("dev-1", anomaly("c-1", version="1")))
    default = await ml_queue.finished(await ml_queue.add_request("dev-1", anomaly("c-2")))
    assert pinned.returnvalue["model_version"] == "1"
    assert default.returnvalue["model_version"] == "2"


async def test_a_request_past_its_deadline_completes_as_timeout_without_compute(start_worker, ml_queue):
    start_worker()
    # The slow model would compute for 5 s: a timeout answer well before that shows nothing ran.
    request = {"cid": "late-1", "model": "slow", "input": [[5000]]}
    started = time.monotonic()
    done = await ml_queue.finished(await ml_queue.add_request("dev-1", request, deadline_in_ms=-1), timeout=4)

    assert time.monotonic() - started < 2
    assert done.state == "completed"
    assert done.returnvalue["ok"] is False
    assert done.returnvalue["error"]["code"] == "timeout"
    assert done.returnvalue["model_version"] == ""
    assert "output" not in done.returnvalue


BAD_INPUTS = {
    "not-a-list": ("a string", "input_invalid"),
    "empty": ([], "input_invalid"),
    "row-not-a-list": ([1, 2, 3, 4], "input_invalid"),
    "too-narrow": ([[1.0, 2.0, 3.0]], "input_invalid"),
    "a-string-reading": ([[1.0, "hot", 3.0, 4.0]], "input_invalid"),
    "a-boolean-reading": ([[1.0, True, 3.0, 4.0]], "input_invalid"),
    # NaN from a msgpack request reaches the queue as JSON null (JSON has no NaN).
    "null-reading": ([[1.0, None, 3.0, 4.0]], "input_invalid"),
    "beyond-float32": ([[1e39, 2.0, 3.0, 4.0]], "input_invalid"),
    "too-many-rows": ([READING] * 5, "input_too_large"),
}


async def test_each_bad_input_fails_its_job_with_its_code_once_and_the_worker_keeps_serving(start_worker, ml_queue):
    start_worker(ML_MAX_INPUT_ROWS="4")
    for name, (rows, _) in BAD_INPUTS.items():
        await ml_queue.add_request("dev-1", anomaly(name, rows))
    after = await ml_queue.add_request("dev-1", anomaly("good-after"))

    for name, (_, code) in BAD_INPUTS.items():
        done = await ml_queue.finished(f"dev-1.{name}")
        assert done.state == "failed", name
        assert done.failed_reason.startswith(f"{code}: "), (name, done.failed_reason)
        assert done.attempts_made == 1, f"{name} was retried"
    assert (await ml_queue.finished(after)).returnvalue["ok"] is True


async def test_an_unknown_model_or_version_fails_with_its_code(start_worker, ml_queue):
    start_worker()
    unknown_model = await ml_queue.finished(await ml_queue.add_request("dev-1", {"cid": "m", "model": "weather", "input": [READING]}))
    unknown_version = await ml_queue.finished(await ml_queue.add_request("dev-1", anomaly("v", version="9")))

    assert unknown_model.failed_reason.startswith("model_unknown: ")
    assert "weather" in unknown_model.failed_reason
    assert unknown_version.failed_reason.startswith("version_unknown: ")
    assert (unknown_model.attempts_made, unknown_version.attempts_made) == (1, 1)


async def test_a_broken_envelope_fails_as_request_invalid(start_worker, ml_queue):
    start_worker()
    good = {"cid": "x", "device_id": "dev-1", "topic_class": "ml-infer", "payload": anomaly("x"), "received_at": 1, "node": "n"}
    broken = {
        "not-an-object": ["ml-infer"],
        "no-payload": {k: v for k, v in good.items() if k != "payload"},
        "other-class": {**good, "topic_class": "telemetry"},
        "no-model": {**good, "payload": {"cid": "x", "input": [READING]}},
        "numeric-version": {**good, "payload": anomaly("x", version=2)},
    }
    for name, data in broken.items():
        await ml_queue.add_data(f"dev-1.{name}", data)

    for name in broken:
        done = await ml_queue.finished(f"dev-1.{name}")
        assert done.failed_reason.startswith("request_invalid: "), (name, done.failed_reason)
        assert done.attempts_made == 1


def add_version(models_dir: Path, name: str, source: str, version: str) -> None:
    """A new version directory, as an operator would add one: copied in beside, then renamed into place."""
    staging = models_dir / name / f".{version}.tmp"
    shutil.copytree(models_dir / name / source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(models_dir / name / version)


async def heartbeat_of(rdb, contracts, worker_id: str) -> dict:
    raw = await rdb.get(contracts.key("worker", worker_id=worker_id))
    return json.loads(raw) if raw else {}


async def run_load_until(ml_queue, prefix: str, until, count_max: int = 2000) -> list[str]:
    """Adds a request every few ms until `until()` is true; returns the job ids."""
    ids = []
    while len(ids) < count_max and not await until():
        ids.append(await ml_queue.add_request("dev-load", anomaly(f"{prefix}-{len(ids)}")))
        await asyncio.sleep(0.005)
    for i in range(20):  # and some more after the switch
        ids.append(await ml_queue.add_request("dev-load", anomaly(f"{prefix}-after-{i}")))
    return ids


@pytest.mark.parametrize("how", ["control-channel", "new-version-directory"])
async def test_hot_reload_switches_the_default_with_jobs_in_flight_and_none_failing(
    how, start_worker, ml_queue, models_dir, rdb, contracts
):
    worker = start_worker(ML_MODEL_SCAN_MS="300" if how == "new-version-directory" else "600000")

    async def switched() -> bool:
        return (await heartbeat_of(rdb, contracts, worker.id)).get("models", {}).get("anomaly", {}).get("default") == "3"

    async def switch() -> None:
        await asyncio.sleep(0.3)
        add_version(models_dir, "anomaly", "2", "3")
        if how == "control-channel":
            # Commands the worker does not understand are logged and ignored; the next one still works.
            await rdb.publish(contracts.key("control"), "reload everything")
            await rdb.publish(contracts.key("control"), json.dumps({"action": "delete", "model": "anomaly"}))
            await rdb.publish(contracts.key("control"), json.dumps({"action": "reload", "model": "anomaly"}))

    switching = asyncio.create_task(switch())
    ids = await run_load_until(ml_queue, how, switched)
    await switching

    assert await switched(), "the heartbeat never showed version 3 as the default"
    results = [await ml_queue.finished(job_id) for job_id in ids]
    assert [r.state for r in results].count("failed") == 0
    versions = [r.returnvalue["model_version"] for r in results]
    assert versions[0] == "2" and versions[-1] == "3"
    heartbeat = await heartbeat_of(rdb, contracts, worker.id)
    assert heartbeat["models"]["anomaly"] == {"default": "3", "versions": ["1", "2", "3"]}
    if how == "control-channel":
        assert [line["msg"] for line in worker.logs()].count("control message ignored: not JSON") == 1


async def test_the_heartbeat_reports_the_worker_its_models_and_its_jobs(start_worker, ml_queue, rdb, contracts):
    worker = start_worker(ML_WORKER_HEARTBEAT_MS="200", ML_WORKER_CONCURRENCY="8")
    await ml_queue.finished(await ml_queue.add_request("dev-1", anomaly("ok-1")))
    await ml_queue.finished(await ml_queue.add_request("dev-1", anomaly("bad-1", [])))
    await asyncio.sleep(0.5)  # a beat after both jobs

    heartbeat = await heartbeat_of(rdb, contracts, worker.id)
    assert heartbeat["id"] == worker.id and heartbeat["pid"] == worker.proc.pid
    assert heartbeat["state"] == "running" and heartbeat["concurrency"] == 8
    assert heartbeat["models"]["anomaly"] == {"default": "2", "versions": ["1", "2"]}
    assert (heartbeat["jobs_done"], heartbeat["jobs_failed"]) == (1, 1)
    assert heartbeat["started_at"] <= heartbeat["last_job_at"] <= heartbeat["at"]
    assert abs(heartbeat["at"] - time.time() * 1000) < 1000
    # Listed in the workers zset scored by the heartbeat time, and expiring after 10 beats.
    assert await rdb.zscore(contracts.key("workers"), worker.id) == pytest.approx(heartbeat["at"], abs=1000)
    assert 0 < await rdb.pttl(contracts.key("worker", worker_id=worker.id)) <= 2000


async def test_a_job_longer_than_the_lock_keeps_its_lock_and_runs_once(start_worker, ml_queue):
    start_worker(ML_WORKER_LOCK_MS="400")
    done = await ml_queue.finished(await ml_queue.add_request("dev-1", {"cid": "long", "model": "slow", "input": [[1600]]}, 10_000))
    assert done.state == "completed"
    assert done.returnvalue["ok"] is True
    assert done.attempts_started == 1, "the job stalled and was started again"


async def test_sigterm_lets_the_running_job_finish_then_exits_and_withdraws_the_heartbeat(start_worker, ml_queue, rdb, contracts):
    worker = start_worker()
    slow = await ml_queue.add_request("dev-1", {"cid": "slow", "model": "slow", "input": [[1200]]}, 10_000)
    while await ml_queue.state(slow) != "active":
        await asyncio.sleep(0.02)

    worker.proc.terminate()
    await asyncio.sleep(0.3)
    after_stop = await ml_queue.add_request("dev-1", anomaly("after-stop"))
    code = await asyncio.to_thread(worker.proc.wait, 15)

    assert code == 0
    done = await ml_queue.finished(slow, timeout=1)
    assert done.state == "completed" and done.returnvalue["ok"] is True
    assert await ml_queue.state(after_stop) == "waiting"  # a stopping worker takes no new job
    assert await rdb.get(contracts.key("worker", worker_id=worker.id)) is None
    assert await rdb.zscore(contracts.key("workers"), worker.id) is None
    messages = [line["msg"] for line in worker.logs()]
    assert messages[0] == "worker started" and messages[-1] == "worker stopped"


async def test_two_worker_processes_share_the_queue(start_worker, ml_queue):
    # One job at a time each, on the slow model: a worker busy with one job leaves the next to the other.
    first, second = start_worker("w-a", ML_WORKER_CONCURRENCY="1"), start_worker("w-b", ML_WORKER_CONCURRENCY="1")
    ids = [await ml_queue.add_request("dev-1", {"cid": f"s-{i}", "model": "slow", "input": [[30]]}) for i in range(30)]
    results = [await ml_queue.finished(job_id) for job_id in ids]
    assert all(r.returnvalue["ok"] for r in results)
    assert {r.returnvalue["worker"] for r in results} == {first.id, second.id}


async def test_a_burst_completes_each_job_once_with_its_own_result(start_worker, ml_queue):
    start_worker()
    ids = [await ml_queue.add_request("dev-burst", anomaly(f"b-{i}", [[20.0 + i % 7, 40.0, 0.02, 1.3]])) for i in range(300)]
    results = [await ml_queue.finished(job_id) for job_id in ids]
    assert all(r.returnvalue["ok"] for r in results)
    assert [r.returnvalue["cid"] for r in results] == [f"b-{i}" for i in range(300)]
    assert {r.attempts_started for r in results} == {1}


async def test_sigterm_in_a_burst_leaves_no_job_active(start_worker, ml_queue):
    worker = start_worker()
    ids = [await ml_queue.add_request("dev-burst", anomaly(f"t-{i}"), 60_000) for i in range(400)]
    worker.proc.terminate()
    assert await asyncio.to_thread(worker.proc.wait, 15) == 0

    counts = await ml_queue.queue.getJobCounts("active", "waiting", "completed", "failed", "delayed")
    # Every job the worker took is completed; the rest wait for the next worker; none is held by a lock.
    assert counts["active"] == counts["failed"] == counts["delayed"] == 0
    assert counts["waiting"] + counts["completed"] == len(ids)
    assert counts["completed"] > 0


async def test_a_job_of_a_killed_worker_is_retried_by_another_once_its_lock_lapses(start_worker, ml_queue):
    doomed = start_worker("w-doomed", ML_WORKER_LOCK_MS="500", ML_WORKER_CONCURRENCY="1")
    slow = await ml_queue.add_request("dev-1", {"cid": "orphan", "model": "slow", "input": [[1500]]}, 15_000)
    while await ml_queue.state(slow) != "active":
        await asyncio.sleep(0.02)
    doomed.stop(signal.SIGKILL)
    survivor = start_worker("w-survivor", ML_WORKER_LOCK_MS="500")

    done = await ml_queue.finished(slow, timeout=8)
    assert done.state == "completed"
    assert done.returnvalue["worker"] == survivor.id
    assert done.attempts_started == 2


async def test_an_idle_worker_stops_at_once_on_sigterm(start_worker):
    # Every free slot is waiting to fetch (concurrency 32): none of them may start a new blocking wait.
    worker = start_worker(ML_WORKER_CONCURRENCY="32")
    started = time.monotonic()
    worker.proc.terminate()
    assert await asyncio.to_thread(worker.proc.wait, 15) == 0
    assert time.monotonic() - started < 3


async def test_a_job_at_a_time_costs_a_few_redis_calls_not_one_per_free_slot(start_worker, ml_queue, rdb):
    start_worker(ML_WORKER_CONCURRENCY="32")
    await rdb.config_resetstat()
    jobs = 40
    for i in range(jobs):
        job_id = await ml_queue.add_request("dev-trickle", anomaly(f"tr-{i}"))
        assert (await ml_queue.finished(job_id)).returnvalue["ok"] is True
    stats = await rdb.info("commandstats")
    scripts = stats.get("cmdstat_evalsha", {}).get("calls", 0) + stats.get("cmdstat_eval", {}).get("calls", 0)
    # Per job: the producer's add, the worker's moveToActive and its completion, one moveToActive that finds the
    # queue empty, and the test's own reads; 32 free slots each fetching would be over 30.
    assert scripts / jobs < 8, f"{scripts} script calls for {jobs} jobs"


async def test_a_worker_whose_starter_is_gone_stops_by_itself(start_worker, rdb, contracts):
    # ML_WORKER_PARENT_PID names the process that started it (the ml-bridge): this test process is
    # its parent, so naming another pid is what the worker sees once its bridge died and it was
    # re-parented. It must stop as on SIGTERM, not live on unsupervised.
    worker = start_worker(ML_WORKER_PARENT_PID=str(os.getpid()))
    assert worker.proc.poll() is None
    orphan = start_worker("w-orphan", ML_WORKER_PARENT_PID="1", ML_WORKER_HEARTBEAT_MS="100")
    assert await asyncio.to_thread(orphan.proc.wait, 10) == 0
    assert "the process that started this worker is gone: stopping" in [line["msg"] for line in orphan.logs()]
    assert await rdb.get(contracts.key("worker", worker_id=orphan.id)) is None
    assert worker.proc.poll() is None  # its own parent is alive
