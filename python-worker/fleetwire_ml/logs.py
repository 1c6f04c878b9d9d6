"""JSON lines on stdout, pino-like: {"level": "info", "time": <Unix ms>, "msg": ..., "worker": <id>, ...}.

Job lines carry cid and device_id (pass them in `extra`). Shipping and pretty-printing happen
outside the process, as with the Node services.
"""

from __future__ import annotations

import json
import logging
import sys

# pino's level names, with the stdlib levels they map to.
LEVELS = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
_NAMES = {number: name for name, number in LEVELS.items()}

# Attributes every LogRecord has; anything else on a record came from `extra` and is logged.
_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_id: str):
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "time": int(record.created * 1000),
            "msg": record.getMessage(),
            "worker": self.worker_id,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS:
                line[key] = value
        if record.exc_info:
            line["err"] = {
                "type": record.exc_info[0].__name__ if record.exc_info[0] else None,
                "stack": self.formatException(record.exc_info),
            }
        return json.dumps(line, default=str, separators=(",", ":"))


def make_logger(worker_id: str, level: str) -> logging.Logger:
    logging.addLevelName(LEVELS["trace"], "TRACE")
    log = logging.getLogger("fleetwire_ml")
    log.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(worker_id))
    log.addHandler(handler)
    log.setLevel(LEVELS[level])
    log.propagate = False
    return log
