"""Signed tracking tokens: what an impression or click URL carries, tamper-evident and expiring.

A token is ``<payload>.<signature>``, both base64url without padding. The payload is a compact
msgpack array; the signature is HMAC-SHA256 over the payload bytes with a key derived from the
server secret (so tracking tokens never share a key with anything else).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from enum import StrEnum

import msgspec

from adserve.domain import Pricing

__all__ = ["TokenError", "TokenKind", "TrackingClaims", "TrackingSigner"]


class TokenKind(StrEnum):
    IMPRESSION = "i"
    CLICK = "c"


class TokenError(Exception):
    """`reason` is 'tampered' (bad shape or signature) or 'expired'; stored with invalid clicks."""

    def __init__(self, reason: str, claims: TrackingClaims | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.claims = claims


@dataclass(frozen=True, slots=True)
class TrackingClaims:
    kind: TokenKind
    decision_id: uuid.UUID
    creative_id: int
    campaign_id: int
    placement_id: int
    user_key: str | None
    issued_at: int  # unix seconds
    pricing: Pricing  # at serving time: CPM charges on the impression, CPC on a valid click
    cost_micros: int  # what the charged event costs: CPM price/1000 or the CPC bid, in micro-units

    @property
    def impression_cost(self) -> float:
        return self.cost_micros / 1_000_000 if self.pricing is Pricing.CPM else 0.0

    @property
    def click_cost(self) -> float:
        return self.cost_micros / 1_000_000 if self.pricing is Pricing.CPC else 0.0


_Payload = tuple[str, bytes, int, int, int, str | None, int, str, int]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TrackingSigner:
    def __init__(self, secret_key: str, ttl_s: int) -> None:
        self._key = hashlib.sha256(b"adserve-tracking-v1:" + secret_key.encode()).digest()
        self.ttl_s = ttl_s
        self._decoder = msgspec.msgpack.Decoder(_Payload)

    def _signature(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:20]

    def sign(self, claims: TrackingClaims) -> str:
        payload = msgspec.msgpack.encode(
            (
                claims.kind.value,
                claims.decision_id.bytes,
                claims.creative_id,
                claims.campaign_id,
                claims.placement_id,
                claims.user_key,
                claims.issued_at,
                claims.pricing.value,
                claims.cost_micros,
            )
        )
        return f"{_b64(payload)}.{_b64(self._signature(payload))}"

    def verify(self, token: str, kind: TokenKind, now: float) -> TrackingClaims:
        """Claims of a genuine, unexpired token of `kind`; raises TokenError otherwise.

        An expired but genuine token raises with its claims attached, so the click can still be
        stored (as invalid) against its decision.
        """
        try:
            payload_text, signature_text = token.split(".")
            payload, signature = _unb64(payload_text), _unb64(signature_text)
        except (ValueError, TypeError) as exc:
            raise TokenError("tampered") from exc
        if not hmac.compare_digest(signature, self._signature(payload)):
            raise TokenError("tampered")
        try:
            kind_code, decision, creative, campaign, placement, user, issued, pricing, cost = (
                self._decoder.decode(payload)
            )
            claims = TrackingClaims(
                TokenKind(kind_code),
                uuid.UUID(bytes=decision),
                creative,
                campaign,
                placement,
                user,
                issued,
                Pricing(pricing),
                cost,
            )
        except (msgspec.DecodeError, ValueError) as exc:
            raise TokenError("tampered") from exc
        if claims.kind is not kind:
            raise TokenError("tampered")
        if now - claims.issued_at > self.ttl_s:
            raise TokenError("expired", claims)
        return claims
