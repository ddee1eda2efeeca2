"""Diagnostic logging on stderr (text or JSON), kept apart from the audit trail."""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            payload["worker"] = self.worker
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def configure(fmt: str = "text", level: str = "info", worker: int | None = None) -> None:
    """Route pgwarden's diagnostics to stderr in the chosen format; ``worker`` (one of
    several worker processes) is named in every line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(worker))
    else:
        tag = f"[worker {worker}] " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    # Modules log under "pgwarden.*" or their import path "proxy.*"; both go to stderr.
    for name in ("pgwarden", "proxy"):
        root = logging.getLogger(name)
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        root.propagate = False
