"""Logging setup: human-readable lines by default, one JSON object per line with
``log.format = "json"`` (or ``--log-format json``); a threshold per logger with
``log.levels``. Secrets never appear (callers log key ids, never keys, nonces or
tokens).

A JSON line has stable keys: ``ts`` (UTC, RFC 3339, milliseconds), ``level``,
``logger``, ``msg``, then ``session_id``, ``subscriber_id`` and ``key_id`` where the line
is about one (:mod:`sessiongate.core.logfields`), and ``exc`` for a logged exception.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping

from sessiongate.core import logfields

__all__ = ["JsonFormatter", "configure"]


class JsonFormatter(logging.Formatter):
    """One JSON object a line (keys in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, str] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        bound = logfields.current()
        for name in logfields.FIELDS:  # given with extra={...}, else bound in the context
            value = getattr(record, name, None) or bound.get(name)
            if value:
                data[name] = str(value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure(level: str = "INFO", fmt: str = "text",
              levels: Mapping[str, str] | None = None) -> None:
    """Send logs to stderr in ``fmt``; ``level`` for all, ``levels`` per logger name
    (``{"sessiongate.events": "DEBUG"}``: that logger and its children)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # warnings.warn() output goes through the handler too (a JSON line, not raw text)
    logging.captureWarnings(True)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    for name, threshold in (levels or {}).items():
        logging.getLogger(name).setLevel(threshold)
