"""The ml-infer consumer: a BullMQ worker whose processor turns one request into one result.

Outcomes (common/contracts/ml.json; the ml-bridge reads them back):
- the deadline passed: the job COMPLETES with {ok: false, error: {code: "timeout"}} and nothing is computed;
- the request is refused (broken envelope, unknown model or version, bad input): the job FAILS with
  UnrecoverableError("<code>: <message>"), so BullMQ does not retry what cannot succeed;
- anything else raised: an ordinary failure, which BullMQ retries (attempts from queues.json);
- otherwise the job COMPLETES with the model's output (ml-job-result.schema.json).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from bullmq import Worker
from bullmq.custom_errors import UnrecoverableError
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from fleetwire_ml.batching import MicroBatcher
from fleetwire_ml.config import Settings
from fleetwire_ml.contracts import ML_INFER_CLASS, Contracts
from fleetwire_ml.errors import MlError
from fleetwire_ml.models import ModelRegistry


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class JobCounters:
    """What the heartbeat reports about the jobs this process has finished."""

    jobs_done: int = 0
    jobs_failed: int = 0
    last_job_at: int | None = None

    def done(self) -> None:
        self.jobs_done += 1
        self.last_job_at = now_ms()

    def failed(self) -> None:
        self.jobs_failed += 1
        self.last_job_at = now_ms()


class EnvelopeError(MlError):
    def __init__(self, message: str):
        super().__init__("request_invalid", message)


class EnvelopeCheck:
    """The checks of job data that the processor relies on, with the required fields read from the
    envelope and request schemas. The broker validated the payload already; a queue is a shared
    surface, so a hand-made or older producer's job is refused here rather than crashing later."""

    def __init__(self, contracts: Contracts):
        self.envelope_required = contracts.schema("ingress-envelope.schema.json")["required"]
        self.request_required = contracts.schema(contracts.ml_request_schema)["required"]

    def __call__(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise EnvelopeError("job data is not an ingress envelope object")
        missing = [f for f in self.envelope_required if f not in data]
        if missing:
            raise EnvelopeError(f"envelope lacks {', '.join(missing)}")
        if data["topic_class"] != ML_INFER_CLASS:
            raise EnvelopeError(f"topic_class is {data['topic_class']!r}, not {ML_INFER_CLASS!r}")
        for field in ("cid", "device_id"):
            if not isinstance(data[field], str):
                raise EnvelopeError(f"envelope {field} is not a string")
        deadline_at = data.get("deadline_at")
        if deadline_at is not None and (not isinstance(deadline_at, int) or isinstance(deadline_at, bool)):
            raise EnvelopeError("deadline_at is not an integer (Unix ms)")
        payload = data["payload"]
        if not isinstance(payload, dict):
            raise EnvelopeError("payload is not an object")
        missing = [f for f in self.request_required if f not in payload]
        if missing:
            raise EnvelopeError(f"request lacks {', '.join(missing)}")
        if not isinstance(payload["model"], str) or not payload["model"]:
            raise EnvelopeError("model is not a non-empty string")
        version = payload.get("version")
        if version is not None and not isinstance(version, str):
            raise EnvelopeError("version is not a string")
        return data


class InferenceProcessor:
    """The BullMQ processor: called with (job, token) for every job the worker takes."""

    def __init__(
        self,
        contracts: Contracts,
        settings: Settings,
        registry: ModelRegistry,
        batcher: MicroBatcher,
        counters: JobCounters,
        log: logging.Logger,
    ):
        self.check = EnvelopeCheck(contracts)
        self.timeout_message = contracts.result_errors["timeout"]
        self.worker_id = settings.worker_id
        self.max_rows = settings.max_input_rows
        self.registry = registry
        self.batcher = batcher
        self.counters = counters
        self.log = log

    async def __call__(self, job: Any, token: str) -> dict[str, Any]:
        data = job.data
        where = _job_fields(job, data)
        try:
            result = await self._process(data)
        except MlError as err:
            self.counters.failed()
            self.log.warning("job refused", extra={**where, "code": err.code, "reason": err.message})
            raise UnrecoverableError(str(err)) from err
        except Exception:
            self.counters.failed()
            self.log.warning("job failed: BullMQ retries it if it has attempts left", extra={**where, "code": "internal"}, exc_info=True)
            raise
        self.counters.done()
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("job done", extra={**where, "ok": result["ok"], "model_version": result["model_version"]})
        return result

    async def _process(self, data: Any) -> dict[str, Any]:
        envelope = self.check(data)
        payload = envelope["payload"]
        base = {"cid": envelope["cid"], "device_id": envelope["device_id"], "model": payload["model"], "worker": self.worker_id}
        deadline_at = envelope.get("deadline_at")
        if deadline_at is not None and deadline_at <= now_ms():
            # Nobody is waiting for this answer any more: the bridge has answered timeout or is about to.
            return {**base, "ok": False, "error": {"code": "timeout", "message": self.timeout_message}, "model_version": ""}
        model = self.registry.resolve(payload["model"], payload.get("version"))
        rows = model.prepare(payload["input"], self.max_rows)
        inference = await self.batcher.infer(model, rows)
        return {
            **base,
            "ok": True,
            "output": inference.output,
            "model_version": model.version,
            "compute_ms": inference.compute_ms,
            "batch_size": inference.batch_size,
        }


def _job_fields(job: Any, data: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"job_id": job.id}
    if isinstance(data, dict):
        for key in ("cid", "device_id"):
            if isinstance(data.get(key), str):
                fields[key] = data[key]
    return fields


class FetchNextWorker(Worker):
    """bullmq-python's Worker, taking its next job in the same script call that completes a job.

    Node's BullMQ does this (moveToFinished with fetchNext); bullmq-python 3.4.4 passes
    fetch_next=False and spends a separate moveToActive round trip on every job, about a third of
    the worker's CPU per job in a profile. Here a completion asks for the next job, and the slot that
    finished one job processes the next, so concurrency is unchanged. Failures and a closing or
    paused worker fetch nothing: close() waits for the chained job like any running one.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fetched: dict[str, list[Any]] = {}  # token -> the next job's data, from the completion
        self._fetch_lock = asyncio.Lock()
        complete = self.backend.moveToCompleted

        async def complete_and_fetch(job: Any, value: Any, remove: Any, token: str, fetch_next: bool = False) -> Any:
            fetch = not (self.closing or self.paused)
            moved = await complete(job, value, remove, token, fetch_next=fetch)
            if fetch and moved["result"] and moved["result"][0]:
                self._fetched[token] = moved["result"]
            return moved

        self.backend.moveToCompleted = complete_and_fetch

    async def getNextJob(self, token: str) -> Any:
        # One fetch at a time. bullmq-python's run loop starts a fetch for every free slot at once
        # (`concurrency` tasks); while one of them blocks waiting for a job, the others each make a
        # moveToActive round trip that finds nothing. At 500 one-row jobs/s that was about 30 wasted
        # script calls per job, and a job's latency went from about 1 ms to 15 ms in a loaded event
        # loop. In a busy queue the slots still fetch in parallel, each in its completing call (above).
        async with self._fetch_lock:
            if self.closing or self.paused:
                return None  # the others queued here must not start a new blocking wait
            return await super().getNextJob(token)

    async def processJob(self, job: Any, token: str) -> None:
        while job is not None:
            await super().processJob(job, token)
            fetched = self._fetched.pop(token, None)
            # The fetched job is active with this token's lock: it must be processed, closing or not.
            job = await self.nextJobFromJobData(*fetched, token) if fetched else None
            if job is not None:
                self.emit("active", job, "waiting")


def pooled_client(settings: Settings) -> redis.Redis:
    """The worker's Redis client, with a connection pool.

    Given a URL, bullmq-python opens a single-connection client, so the script calls of all
    concurrent jobs queue behind each other on one socket; measured on the 2-core machine with
    1-row jobs, a pool takes about half the CPU per job and doubles the jobs/s. The pool grows to
    the commands in flight at once: one per concurrent job plus lock renewal, the stalled check and
    the blocking wait for jobs. The retry policy is bullmq's own (bullmq/redis_connection.py).
    """
    return redis.from_url(
        settings.redis_url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=20, base=1), 20),
        retry_on_error=[redis_errors.BusyLoadingError, redis_errors.ConnectionError, redis_errors.TimeoutError],
    )


def build_worker(processor: InferenceProcessor, contracts: Contracts, settings: Settings) -> Worker:
    """The BullMQ worker on ml-infer, not yet running (main() runs it and watches the run)."""
    return FetchNextWorker(
        contracts.ml_queue,
        processor,
        {
            "connection": pooled_client(settings),
            "prefix": contracts.prefix,
            "concurrency": settings.concurrency,
            # A killed worker's job is retried once its lock lapses; the lock is renewed every
            # lockDuration/4 while the job runs, so a long job keeps it.
            "lockDuration": settings.lock_ms,
            # The stalled check runs every lock period: a lapsed lock is seen within one to two periods,
            # soon enough for a retry inside the default 2 s deadline window of the bridge.
            "stalledInterval": settings.lock_ms,
            # A job whose worker died twice goes to failed (the bridge answers it) rather than round again.
            "maxStalledCount": 1,
            "autorun": False,
            "name": settings.worker_id,
        },
    )
