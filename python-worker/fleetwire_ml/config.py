"""The worker's settings, from the environment (the ml-bridge spawns it with them), checked once and frozen.

Defaults of the ML_* settings shared with the Node side come from contracts/ml.json.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fleetwire_ml.contracts import Contracts
from fleetwire_ml.logs import LEVELS

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_CONCURRENCY = 32
DEFAULT_MODEL_SCAN_MS = 2000


class ConfigError(Exception):
    """A setting that cannot be used; the message names the variable and what it takes."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    models_dir: Path
    worker_id: str
    concurrency: int
    heartbeat_ms: int
    lock_ms: int
    max_input_rows: int
    model_scan_ms: int
    stop_grace_ms: int
    log_level: str
    # The process that started this worker (the ml-bridge sets it): when it is gone, the worker stops.
    parent_pid: int | None = None


def _int(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer (default {default})") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum} (default {default})")
    return value


def load_settings(contracts: Contracts, env: dict[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    defaults = contracts.setting_defaults

    redis_url = env.get("REDIS_URL", "")
    if not redis_url:
        raise ConfigError("REDIS_URL is required, e.g. redis://127.0.0.1:6379")
    if urlparse(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL={redis_url!r} must be a redis://, rediss:// or unix:// URL")

    models_dir = Path(env.get("ML_MODELS_DIR") or DEFAULT_MODELS_DIR)
    if not models_dir.is_dir():
        raise ConfigError(f"ML_MODELS_DIR={models_dir} is not a directory: point it at a models/<name>/<version>/ tree")

    log_level = (env.get("LOG_LEVEL") or "info").lower()
    if log_level not in LEVELS:
        raise ConfigError(f"LOG_LEVEL={log_level!r} must be one of {', '.join(LEVELS)}")

    heartbeat_ms = _int(env, "ML_WORKER_HEARTBEAT_MS", defaults["ML_WORKER_HEARTBEAT_MS"])
    # BullMQ checks locks every lockDuration/4: below 100 ms it would spend its time renewing them.
    lock_ms = _int(env, "ML_WORKER_LOCK_MS", defaults["ML_WORKER_LOCK_MS"], minimum=100)

    return Settings(
        redis_url=redis_url,
        models_dir=models_dir,
        worker_id=env.get("ML_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
        concurrency=_int(env, "ML_WORKER_CONCURRENCY", DEFAULT_CONCURRENCY),
        heartbeat_ms=heartbeat_ms,
        lock_ms=lock_ms,
        max_input_rows=_int(env, "ML_MAX_INPUT_ROWS", defaults["ML_MAX_INPUT_ROWS"]),
        model_scan_ms=_int(env, "ML_MODEL_SCAN_MS", DEFAULT_MODEL_SCAN_MS),
        # How long a stop waits for running jobs: no request's deadline is further away than this,
        # so a job still running after it has no one waiting for its answer.
        stop_grace_ms=_int(env, "ML_MAX_TIMEOUT_MS", defaults["ML_MAX_TIMEOUT_MS"]),
        log_level=log_level,
        parent_pid=_int(env, "ML_WORKER_PARENT_PID", 0) if env.get("ML_WORKER_PARENT_PID") else None,
    )
