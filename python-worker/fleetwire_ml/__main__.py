"""fleetwire-ml-worker (python -m fleetwire_ml): settings from the environment, models loaded,
then the BullMQ worker, heartbeat, control channel and model rescan until SIGTERM or SIGINT.

Exit codes: 0 after a clean stop (running jobs finished, heartbeat withdrawn); 2 when it cannot
start (bad setting, no model loads); 1 when it crashes, or when a stop cannot finish within
ML_MAX_TIMEOUT_MS (Redis gone), for the supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys

import redis.asyncio as redis
from bullmq import Worker

from fleetwire_ml.batching import MicroBatcher
from fleetwire_ml.config import ConfigError, Settings, load_settings
from fleetwire_ml.contracts import Contracts, ContractsNotFound, load_contracts
from fleetwire_ml.control import ControlListener, ModelRescan
from fleetwire_ml.heartbeat import Heartbeat
from fleetwire_ml.logs import make_logger
from fleetwire_ml.models import ModelRegistry
from fleetwire_ml.worker import InferenceProcessor, JobCounters, build_worker

EXIT_CRASHED = 1
EXIT_CANNOT_START = 2


class CannotStart(Exception):
    pass


async def serve(contracts: Contracts, settings: Settings) -> None:
    log = make_logger(settings.worker_id, settings.log_level)
    # First of all, so that a SIGTERM while the models load is a clean stop, not a kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = ModelRegistry(settings.models_dir, log)
    loaded = registry.scan()
    if not registry.describe():
        raise CannotStart(f"no model loaded from ML_MODELS_DIR={settings.models_dir}: it needs <name>/<version>/model.onnx + manifest.json")

    # The models and libraries loaded so far stay for the process's life: out of the cyclic GC's way
    # (gc.freeze), and a young generation big enough that a collection is rare rather than every
    # few jobs. In bench/ml.mjs --stages the slowest 1% of jobs spent a median 5 ms in the worker
    # before, 1-2 ms after.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    counters = JobCounters()
    batcher = MicroBatcher()
    client = redis.from_url(settings.redis_url, decode_responses=True)
    heartbeat = Heartbeat(client, contracts, settings, registry, counters, log)
    await heartbeat.beat()  # before taking jobs: the bridge sees the worker as soon as it works
    worker = build_worker(InferenceProcessor(contracts, settings, registry, batcher, counters, log), contracts, settings)
    worker.on("error", lambda err, *_: log.error("bullmq worker error", extra={"err": repr(err)}))
    worker.on(
        "stalled",
        lambda job_id, *_: log.warning("job stalled: its lock lapsed, BullMQ moved it back or failed it", extra={"job_id": job_id}),
    )

    control = ControlListener(client, contracts, registry, heartbeat.beat, log)
    background = [
        asyncio.create_task(heartbeat.run(), name="heartbeat"),
        asyncio.create_task(control.run(), name="control"),
        asyncio.create_task(ModelRescan(registry, settings.model_scan_ms, heartbeat.beat, log).run(), name="rescan"),
    ]
    run = asyncio.create_task(worker.run(), name="bullmq-worker")

    if settings.parent_pid is not None:
        background.append(asyncio.create_task(watch_parent(settings.parent_pid, settings.heartbeat_ms, stop, log), name="parent"))
    log.info(
        "worker started",
        extra={
            "pid": os.getpid(),
            "models": registry.describe(),
            "loaded": loaded,
            "queue": contracts.ml_queue,
            "concurrency": settings.concurrency,
        },
    )

    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopper, *background}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        # The BullMQ loop or a background task ended on its own: a crash. Exit non-zero without
        # withdrawing, so the supervisor sees it and restarts the process.
        ended = next(t for t in (run, *background) if t.done())
        stopper.cancel()
        raise RuntimeError(f"{ended.get_name()} ended unexpectedly") from (ended.exception() if not ended.cancelled() else None)

    log.info("stopping: taking no more jobs, finishing the running ones", extra={"running": len(worker.jobs)})
    heartbeat.state = "stopping"
    stopping = asyncio.create_task(stop_gracefully(worker, run, background, heartbeat, batcher, client, log))
    done, _ = await asyncio.wait({stopping}, timeout=settings.stop_grace_ms / 1000)
    if not done:
        # bullmq and redis-py retry a lost Redis for minutes and bullmq's close() cannot be cancelled:
        # leave now. Jobs still active are retried by another worker once their locks lapse.
        log.error(
            "stop took longer than ML_MAX_TIMEOUT_MS (is Redis reachable?): exiting without withdrawing",
            extra={"running": len(worker.jobs)},
        )
        sys.stdout.flush()
        os._exit(EXIT_CRASHED)
    stopping.result()
    log.info("worker stopped", extra={"jobs_done": counters.jobs_done, "jobs_failed": counters.jobs_failed})


async def watch_parent(parent_pid: int, interval_ms: int, stop: asyncio.Event, log: logging.Logger) -> None:
    """Stops the worker (as SIGTERM does) once the process that started it is gone.

    A bridge killed outright (SIGKILL, a crash) cannot stop its workers; without this they would
    live on, re-parented, taking jobs no one supervises, and retrying forever once their Redis is
    gone too. The parent is gone when this process's parent is no longer that pid.
    """
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval_ms / 1000)
    log.warning("the process that started this worker is gone: stopping", extra={"parent_pid": parent_pid})
    stop.set()
    await asyncio.Event().wait()  # stays pending: ending would look like a crash of a background task


async def stop_gracefully(
    worker: Worker,
    run: asyncio.Task,
    background: list[asyncio.Task],
    heartbeat: Heartbeat,
    batcher: MicroBatcher,
    client: redis.Redis,
    log: logging.Logger,
) -> None:
    await worker.close()  # waits for the running jobs to complete
    with contextlib.suppress(asyncio.CancelledError):
        await run
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    try:
        await heartbeat.withdraw()
    except (redis.RedisError, OSError) as err:
        log.warning("heartbeat not withdrawn: it expires by itself", extra={"err": str(err)})
    await batcher.close()
    await client.aclose()


def main() -> None:
    try:
        contracts = load_contracts()
        settings = load_settings(contracts)
    except (ConfigError, ContractsNotFound) as err:
        print(f"fleetwire-ml-worker: {err}", file=sys.stderr)
        sys.exit(EXIT_CANNOT_START)
    try:
        asyncio.run(serve(contracts, settings))
    except CannotStart as err:
        print(f"fleetwire-ml-worker: {err}", file=sys.stderr)
        sys.exit(EXIT_CANNOT_START)


if __name__ == "__main__":
    main()
