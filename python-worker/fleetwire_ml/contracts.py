"""The cross-language contracts (common/contracts), read from the JSON files the Node side reads.

Queue name, prefix, attempts, setting defaults, result error codes, Redis key patterns and
schemas all come from there; this module only knows where to find them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

# The topic class of an inference request: the one name the worker holds, everything else
# (its queue, its schema) is looked up from contracts/topics.json by it.
ML_INFER_CLASS = "ml-infer"

CONTRACTS_DIR_ENV = "FLEETWIRE_CONTRACTS_DIR"


class ContractsNotFound(Exception):
    pass


def find_contracts_dir(env: dict[str, str] | None = None) -> Path:
    """FLEETWIRE_CONTRACTS_DIR, else common/contracts in the first directory above this file that has one."""
    env = os.environ if env is None else env
    configured = env.get(CONTRACTS_DIR_ENV)
    if configured:
        path = Path(configured)
        if not (path / "ml.json").is_file():
            raise ContractsNotFound(f"{CONTRACTS_DIR_ENV}={configured} has no ml.json: point it at the repository's common/contracts")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "common" / "contracts"
        if (candidate / "ml.json").is_file():
            return candidate
    raise ContractsNotFound(
        f"no common/contracts above {Path(__file__).parent}: set {CONTRACTS_DIR_ENV} to the repository's common/contracts"
    )


@dataclass(frozen=True)
class Contracts:
    dir: Path

    def read(self, relative: str) -> Any:
        return json.loads((self.dir / relative).read_text(encoding="utf-8"))

    def schema(self, name: str) -> dict[str, Any]:
        return self.read(f"schemas/{name}")

    @cached_property
    def _queues(self) -> dict[str, Any]:
        return self.read("queues.json")

    @cached_property
    def _ml(self) -> dict[str, Any]:
        return self.read("ml.json")

    @cached_property
    def _ml_topic(self) -> dict[str, Any]:
        return next(t for t in self.read("topics.json")["topics"] if t["class"] == ML_INFER_CLASS)

    @property
    def prefix(self) -> str:
        return self._queues["prefix"]

    @property
    def ml_queue(self) -> str:
        return self._ml_topic["queue"]

    @property
    def ml_request_schema(self) -> str:
        return self._ml_topic["schema"]

    @property
    def ml_attempts(self) -> int:
        return self._queues["queues"][self.ml_queue]["attempts"]

    @property
    def ml_job_options(self) -> dict[str, Any]:
        """The job options the broker enqueues ml-infer jobs with (broker/src/ingress.ts jobOptions)."""
        spec = self._queues["queues"][self.ml_queue]
        return {
            "attempts": spec["attempts"],
            "backoff": {"type": "exponential", "delay": spec["backoff_ms"]},
            "removeOnComplete": spec["remove_on_complete"],
            "removeOnFail": spec["remove_on_fail"],
        }

    @property
    def setting_defaults(self) -> dict[str, int]:
        return {name: spec["default"] for name, spec in self._ml["settings"].items()}

    @property
    def result_errors(self) -> dict[str, str]:
        return dict(self._ml["result_errors"])

    def key(self, name: str, **params: str) -> str:
        """A Redis key or channel of ml.json `keys`, e.g. key("worker", worker_id="w1")."""
        return self._ml["keys"][name]["pattern"].format(prefix=self.prefix, **params)


def load_contracts(env: dict[str, str] | None = None) -> Contracts:
    return Contracts(find_contracts_dir(env))
