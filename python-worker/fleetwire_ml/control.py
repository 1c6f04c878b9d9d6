"""Model changes while the worker runs: reload commands on the control channel
(contracts/ml.json keys.control, {"action": "reload", "model": name}, model omitted = all), and a
periodic rescan of the models directory, so a new version directory becomes the default without
a command. Jobs in flight keep the model object they resolved; only later jobs see the change."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as redis

from fleetwire_ml.contracts import Contracts
from fleetwire_ml.errors import MlError
from fleetwire_ml.models import ModelRegistry


class ControlListener:
    def __init__(
        self,
        client: redis.Redis,
        contracts: Contracts,
        registry: ModelRegistry,
        on_change: Callable[[], Awaitable[None]],
        log: logging.Logger,
    ):
        self.client = client
        self.channel = contracts.key("control")
        self.registry = registry
        self.on_change = on_change
        self.log = log
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Listens until cancelled; resubscribes after a lost connection."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self.handle(message["data"])
            except (redis.RedisError, OSError) as err:
                self.subscribed.clear()
                self.log.warning("control channel lost, resubscribing", extra={"err": str(err)})
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()

    async def handle(self, raw: str | bytes) -> None:
        try:
            command = json.loads(raw)
        except ValueError:
            self.log.warning("control message ignored: not JSON", extra={"raw": str(raw)[:200]})
            return
        if not isinstance(command, dict) or command.get("action") != "reload":
            self.log.warning("control message ignored: the only action is reload", extra={"raw": str(raw)[:200]})
            return
        model = command.get("model")
        if model is not None and not isinstance(model, str):
            self.log.warning("control message ignored: model is not a name", extra={"raw": str(raw)[:200]})
            return
        try:
            # In a thread: loading ONNX files must not hold up lock renewals and heartbeats.
            changes = await asyncio.to_thread(self.registry.reload, model)
        except MlError as err:
            self.log.warning("reload refused", extra={"model": model, "code": err.code, "reason": err.message})
            return
        self.log.info("models reloaded", extra={"model": model, "changes": changes, "models": self.registry.describe()})
        await self.on_change()


class ModelRescan:
    """Rescans the models directory every ML_MODEL_SCAN_MS; a half-copied version directory is refused
    by the registry and loaded by a later scan once its files are whole."""

    def __init__(self, registry: ModelRegistry, interval_ms: int, on_change: Callable[[], Awaitable[None]], log: logging.Logger):
        self.registry = registry
        self.interval = interval_ms / 1000
        self.on_change = on_change
        self.log = log

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                changes = await asyncio.to_thread(self.registry.scan)
            except OSError:
                # The directory itself went away or is unreadable for a moment: the next scan tries again.
                self.log.warning("model rescan failed", exc_info=True)
                continue
            if changes:
                self.log.info("models changed on disk", extra={"changes": changes, "models": self.registry.describe()})
                await self.on_change()
