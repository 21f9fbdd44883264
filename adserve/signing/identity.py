"""Pseudonymous user keys: the site's user id never reaches storage, logs or features.

With consent, a user's key is a keyed hash (HMAC) of the site's id: stable, so behaviour and caps
follow the user. Without consent the key is a hash of the session (or of the id and the UTC day),
so it cannot link a person across days and frequency caps still work within a visit.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

__all__ = ["UserKeys"]


class UserKeys:
    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"adserve-user-v1:" + secret_key.encode()).digest()

    def _hash(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def consented(self, user_id: str) -> str:
        return self._hash("u:" + user_id)

    def session(self, user_id: str, session_id: str | None, now: datetime | None = None) -> str:
        day = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
        return "s" + self._hash(f"s:{session_id}" if session_id else f"d:{day}:{user_id}")[1:]

    def key_for(self, user_id: str, consent: bool, session_id: str | None = None) -> str:
        return self.consented(user_id) if consent else self.session(user_id, session_id)
