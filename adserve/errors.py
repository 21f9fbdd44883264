"""Errors a caller can cause, raised by services and mapped to 4xx responses by the app, and
`ServiceUnavailable` (503 with Retry-After) for a request that may succeed if sent again later.

Services are shared by handlers, CLI commands and jobs, so they raise these rather than HTTP
exceptions; `app.py` maps each to its status code and a problem-details body.
"""

from __future__ import annotations

__all__ = ["Conflict", "InvalidInput", "NotFound", "ServiceUnavailable", "UserError"]


class UserError(Exception):
    status_code = 400
    title = "Bad Request"

    def __init__(self, detail: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InvalidInput(UserError):
    status_code = 400
    title = "Invalid input"


class NotFound(UserError):
    status_code = 404
    title = "Not Found"


class Conflict(UserError):
    status_code = 409
    title = "Conflict"


class ServiceUnavailable(UserError):
    """Not the caller's doing: the request cannot be honoured now (its rows could be kept nowhere);
    the same request may succeed after `retry_after_s` (the response's Retry-After)."""

    status_code = 503
    title = "Service Unavailable"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
