"""The broker process's log: one JSON object per line on stderr.

Every line, uvicorn's included, has ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and
``msg``, then the fields its caller attached as ``extra`` -- the commit layer's lines carry
``event`` (``leader_acquired``, ``leader_fenced``, ``leader_standby``,
``leader_released``, ``conflicts``, ``commit_failed``, ``slow_commit``,
``commit_crashed``) and ``queue`` (see ``obque.commit.events``) -- and ``exc`` with the
traceback when there is one. Log shippers (CloudWatch, Cloud Logging, Loki, jq) read the
fields without a parsing rule.

What is logged never includes a token, a lease or a payload: the lines name queues,
brokers, counts and error codes and messages, which name objects but not their contents.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonLogFormatter", "configure_logging"]

#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of its message with terminal colours
}


class JsonLogFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger's records, at ``level`` and above, to ``stream`` (stderr) as
    JSON lines. For the broker process only: it replaces the root logger's handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
