"""Errors a caller can cause, raised by services and mapped to 4xx responses by the app.

Services are shared by handlers, CLI commands and jobs, so they raise these rather than HTTP
exceptions; `app.py` maps each to its status code and a problem-details body.
"""

from __future__ import annotations

__all__ = ["Conflict", "InvalidInput", "NotFound", "UserError"]


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
