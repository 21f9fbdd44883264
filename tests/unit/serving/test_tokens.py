from __future__ import annotations

import uuid

import pytest

from adserve.domain import Pricing
from adserve.signing.identity import UserKeys
from adserve.signing.tokens import TokenError, TokenKind, TrackingClaims, TrackingSigner

SECRET = "k" * 40


def claims(kind: TokenKind = TokenKind.CLICK, issued_at: int = 1_000_000) -> TrackingClaims:
    return TrackingClaims(kind, uuid.uuid4(), 3, 2, 1, "abc", issued_at, Pricing.CPC, 500_000)


def test_round_trip() -> None:
    signer = TrackingSigner(SECRET, ttl_s=86400)
    original = claims()
    assert signer.verify(signer.sign(original), TokenKind.CLICK, now=1_000_100) == original
    assert original.click_cost == 0.5 and original.impression_cost == 0.0


@pytest.mark.parametrize("position", [0, 5, 20, -3])
def test_any_changed_character_is_tampering(position: int) -> None:
    signer = TrackingSigner(SECRET, ttl_s=86400)
    token = signer.sign(claims())
    flipped = token[position]
    replacement = "A" if flipped != "A" else "B"
    tampered = (
        token[:position] + replacement + token[position + 1 :]
        if position >= 0
        else (token[:position] + replacement + (token[position + 1 :] if position != -1 else ""))
    )
    with pytest.raises(TokenError) as error:
        signer.verify(tampered, TokenKind.CLICK, now=1_000_100)
    assert error.value.reason == "tampered"


def test_other_secret_or_kind_is_tampering() -> None:
    token = TrackingSigner(SECRET, 86400).sign(claims())
    with pytest.raises(TokenError, match="tampered"):
        TrackingSigner("z" * 40, 86400).verify(token, TokenKind.CLICK, now=1_000_100)
    with pytest.raises(TokenError, match="tampered"):
        TrackingSigner(SECRET, 86400).verify(token, TokenKind.IMPRESSION, now=1_000_100)
    with pytest.raises(TokenError, match="tampered"):
        TrackingSigner(SECRET, 86400).verify("not-a-token", TokenKind.CLICK, now=1_000_100)


def test_expiry_keeps_claims_for_invalid_click_logging() -> None:
    signer = TrackingSigner(SECRET, ttl_s=60)
    original = claims(issued_at=1_000_000)
    assert signer.verify(signer.sign(original), TokenKind.CLICK, now=1_000_060) == original
    with pytest.raises(TokenError) as error:
        signer.verify(signer.sign(original), TokenKind.CLICK, now=1_000_061)
    assert error.value.reason == "expired"
    assert error.value.claims == original


def test_user_keys_are_keyed_and_stable() -> None:
    keys = UserKeys(SECRET)
    assert keys.consented("alice") == keys.consented("alice")
    assert keys.consented("alice") != UserKeys("q" * 40).consented("alice")
    assert "alice" not in keys.consented("alice")
    assert keys.key_for("alice", consent=False, session_id="s1") != keys.consented("alice")
    assert keys.key_for("alice", consent=False, session_id="s1").startswith("s")
