"""JSON log lines: one object a line, the request id from the context, exceptions kept apart."""

from __future__ import annotations

import json
import logging
import sys

from adserve.logging_config import JsonFormatter, configure_logging, new_request_id, request_id


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("adserve.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_the_extra_fields() -> None:
    line = JsonFormatter().format(_record("%d rows", 3, route="/v1/decisions", request_id="ab" * 16))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "3 rows" and entry["level"] == "WARNING" and entry["logger"] == "adserve.test"
    assert entry["route"] == "/v1/decisions" and entry["request_id"] == "ab" * 16


def test_an_exception_is_its_own_field_on_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("adserve.test", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed" and "ValueError: boom" in entry["exc"]


def test_request_ids_are_new_and_unset_outside_a_request() -> None:
    assert request_id.get() is None
    first, second = new_request_id(), new_request_id()
    assert first != second and len(first) == 32 and int(first, 16) >= 0


def test_uvicorns_access_log_stays_off() -> None:
    """It would write client addresses and paths with their query strings (raw user ids)."""
    configure_logging("INFO", "json")
    access = logging.getLogger("uvicorn.access")
    assert access.disabled and not access.propagate and not access.handlers
    assert logging.getLogger("uvicorn.error").propagate
