"""The worker's heartbeat in Redis (contracts/ml.json keys.worker and keys.workers), read by the
ml-bridge's health endpoint and supervisor: the JSON of ml-worker-heartbeat.schema.json under
the worker's key, expiring after 10 intervals, and the worker id scored by the time in a zset."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any

import redis.asyncio as redis

from fleetwire_ml.config import Settings
from fleetwire_ml.contracts import Contracts
from fleetwire_ml.models import ModelRegistry
from fleetwire_ml.worker import JobCounters, now_ms

# contracts/ml.json: the heartbeat key expires after 10 heartbeat intervals.
EXPIRY_INTERVALS = 10


class Heartbeat:
    def __init__(
        self,
        client: redis.Redis,
        contracts: Contracts,
        settings: Settings,
        registry: ModelRegistry,
        counters: JobCounters,
        log: logging.Logger,
    ):
        self.client = client
        self.key = contracts.key("worker", worker_id=settings.worker_id)
        self.workers_key = contracts.key("workers")
        self.settings = settings
        self.registry = registry
        self.counters = counters
        self.log = log
        self.started_at = now_ms()
        self.host = socket.gethostname()
        self.state = "running"

    def body(self) -> dict[str, Any]:
        return {
            "id": self.settings.worker_id,
            "pid": os.getpid(),
            "host": self.host,
            "started_at": self.started_at,
            "at": now_ms(),
            "models": self.registry.describe(),
            "jobs_done": self.counters.jobs_done,
            "jobs_failed": self.counters.jobs_failed,
            "last_job_at": self.counters.last_job_at,
            "state": self.state,
            "concurrency": self.settings.concurrency,
        }

    async def beat(self) -> None:
        body = self.body()
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, json.dumps(body, separators=(",", ":")), px=EXPIRY_INTERVALS * self.settings.heartbeat_ms)
        pipe.zadd(self.workers_key, {self.settings.worker_id: body["at"]})
        await pipe.execute()

    async def run(self) -> None:
        """Beats every ML_WORKER_HEARTBEAT_MS until cancelled. A failed beat is logged and the next
        one tried: Redis may be back by then, and missed beats are what the bridge watches for."""
        while True:
            try:
                await self.beat()
            except (redis.RedisError, OSError) as err:
                self.log.warning("heartbeat not written", extra={"err": str(err)})
            await asyncio.sleep(self.settings.heartbeat_ms / 1000)

    async def withdraw(self) -> None:
        """On a clean stop: the last heartbeat says stopping, then the worker leaves the registry."""
        self.state = "stopping"
        await self.beat()
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.key)
        pipe.zrem(self.workers_key, self.settings.worker_id)
        await pipe.execute()
