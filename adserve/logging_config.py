"""Process logging: one JSON object per line (or plain text for humans), each with its request id.

`configure_logging` gives the root logger one handler (uvicorn's loggers propagate to it), so every
line of the process has one format. A line is formatted where it is logged (the request id is
read from `request_id` there, in the request's context) and written by a listener thread, so a
slow log consumer never blocks the event loop. A request's id is set by the app's middleware
(adserve/app.py) and returned as ``X-Request-ID``.

Personal data stays out by construction where we log: requests are logged by route template
(``POST /v1/decisions``), never path, query, body or client address, which can carry raw user ids.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import queue
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Literal

__all__ = [
    "JsonFormatter",
    "configure_logging",
    "new_request_id",
    "request_id",
]

request_id: ContextVar[str | None] = ContextVar("adserve_request_id", default=None)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# The attributes every LogRecord has; anything else on a record came through `extra=`, except
# uvicorn's `color_message` (the message again, with terminal colour codes).
_RECORD_ATTRIBUTES = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "request_id",
        "color_message",
    }
)
# Libraries whose INFO lines say nothing an operator needs.
_QUIET_LOGGERS = ("pgserver", "alembic", "apscheduler")
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")
# uvicorn's access log writes the client address and the path with its query string (raw user ids);
# the app's own request line (adserve.http) replaces it.
_UVICORN_ACCESS = "uvicorn.access"


def new_request_id() -> str:
    """A request's id, always ours: an id a client or proxy sends could be anything, a user id too
    (a proxy can log ours from the response's ``X-Request-ID`` to correlate)."""
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id"?, <extra fields>…, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not getattr(record, "request_id", None):
            record.request_id = "-"
        return super().format(record)


class _StampRequestId(logging.Filter):
    """Runs where the record is logged (before the queue), where the request's context is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class _Enqueue(QueueHandler):
    """Formats each line where it is logged (in the format configured then, with the caller's
    request id) and hands the finished line to the listener thread, which only writes it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        line = self.format(record)
        record = copy.copy(record)
        record.msg, record.args = line, None
        record.exc_info = record.exc_text = record.stack_info = None
        return record


class _Stderr(logging.StreamHandler):
    """Writes to the current `sys.stderr` (a test runner may swap it after start-up)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr


_handler: _Enqueue | None = None


def _install() -> _Enqueue:
    global _handler
    if _handler is None:
        _handler = _Enqueue(queue.SimpleQueue())
        _handler.addFilter(_StampRequestId())
        listener = QueueListener(_handler.queue, _Stderr())  # its default formatter: the line as is
        listener.start()
        atexit.register(listener.stop)  # the last lines are written before the process exits
    return _handler


def configure_logging(level: str, log_format: Literal["json", "text"]) -> None:
    """Makes our handler the root logger's one console handler; idempotent (one per process).

    The console handlers that `logging.basicConfig` and uvicorn installed are replaced (uvicorn's
    loggers propagate to the root instead, but its access log is switched off); handlers of other
    kinds, such as a test runner's capture, are kept."""
    handler = _install()
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for other in list(root.handlers):
        if type(other) is logging.StreamHandler:
            root.removeHandler(other)
    if handler not in root.handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        for other in list(uvicorn_logger.handlers):
            if type(other) is logging.StreamHandler:
                uvicorn_logger.removeHandler(other)
        uvicorn_logger.propagate = True
    access = logging.getLogger(_UVICORN_ACCESS)
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings become log lines in the same format
