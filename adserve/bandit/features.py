"""Vowpal Wabbit text for one decision: one pure function per namespace.

A `cb_explore_adf` example is one `shared` line (the context) followed by one line per action
(a candidate creative). VW keys interactions on a namespace's first letter, so the namespaces are
named to give distinct letters:

    shared |Slot     placement, position, page category, keywords      (S)
           |Visitor  device, geo, hour of day                           (V)
    action |Ad       creative, campaign, advertiser, category, brand    (A)
           |Money    pricing model, bid, price bucket                   (M)

The interest model's score is not a feature: the policy adds it as an offset (`policy.py`), and
VW learns, per slot and visitor (interactions `SA`, `VA`), where that score is off.

Values are percent-encoded where VW's text format would split them (`|`, `:`, whitespace) and
`%` itself, so distinct raw values stay distinct features (`a b` and `a_b` never collide).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adserve.domain import Candidate, DecisionContext

__all__ = [
    "action_line",
    "ad_namespace",
    "cb_label",
    "escape",
    "example_lines",
    "money_namespace",
    "number",
    "price_bucket",
    "shared_line",
    "slot_namespace",
    "visitor_namespace",
]

_SPECIAL = re.compile(r"[%|:\s]")


def escape(value: str) -> str:
    """Percent-encode the characters VW's text parser treats as separators (and `%`)."""
    return _SPECIAL.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)


def number(value: float) -> str:
    """Fixed, short formatting for numeric feature values (6 significant digits)."""
    return format(float(value), ".6g")


def price_bucket(price: float | None) -> int | None:
    """Power-of-two bucket of an item price: 10 and 12 share a bucket, 10 and 40 do not."""
    if price is None or not math.isfinite(price) or price <= 0:
        return None
    return math.floor(math.log2(price))


def _categorical(name: str, value: object | None) -> list[str]:
    if value is None or value == "":
        return []
    return [f"{name}={escape(str(value))}"]


def slot_namespace(context: DecisionContext) -> str:
    """Where the ad appears: `|Slot placement=… position=… page=… kw=…` (one `kw` per keyword)."""
    features = [
        *_categorical("placement", context.placement),
        f"position={context.position}",
        *_categorical("page", context.page_category),
    ]
    for keyword in context.keywords:
        features += _categorical("kw", keyword)
    return "|Slot " + " ".join(features)


def visitor_namespace(context: DecisionContext) -> str:
    """Who asks, coarsely: `|Visitor device=… geo=… hour=…`."""
    features = [
        *_categorical("device", context.device),
        *_categorical("geo", context.geo),
        f"hour={context.hour}",
    ]
    return "|Visitor " + " ".join(features)


def ad_namespace(candidate: Candidate) -> str:
    """The creative's identity and content: ids, category, brand."""
    features = [
        f"creative={candidate.creative_id}",
        f"campaign={candidate.campaign_id}",
        f"advertiser={candidate.advertiser_id}",
        *_categorical("category", candidate.category),
        *_categorical("brand", candidate.brand),
    ]
    return "|Ad " + " ".join(features)


def money_namespace(candidate: Candidate) -> str:
    """How the creative pays: pricing model, bid (numeric) and the product's price bucket."""
    features = [f"pricing={candidate.pricing.value}", f"bid:{number(candidate.bid)}"]
    features += _categorical("price_bucket", price_bucket(candidate.price))
    return "|Money " + " ".join(features)


def cb_label(cost: float, probability: float) -> str:
    """The ADF label for the chosen action line: `0:cost:probability` (action id unused in ADF)."""
    return f"0:{number(cost)}:{number(probability)}"


# A slot's contexts repeat (placement, page, device, geo, hour) and the text is built per decision:
# kept per value of the fields it reads (the context itself, with its history, would be a costly key).
_SHARED_TEXT_SIZE = 16_384
_shared_texts: dict[tuple, str] = {}


def shared_line(context: DecisionContext) -> str:
    key = (
        context.placement,
        context.position,
        context.page_category,
        context.keywords,
        context.device,
        context.geo,
        context.hour,
    )
    text = _shared_texts.get(key)
    if text is None:
        text = f"shared {slot_namespace(context)} {visitor_namespace(context)}"
        if len(_shared_texts) >= _SHARED_TEXT_SIZE:
            _shared_texts.clear()  # bounded memory; contexts repeat, so it refills in seconds
        _shared_texts[key] = text
    return text


@lru_cache(maxsize=65_536)
def _creative_text(candidate: Candidate) -> str:
    # a creative's Ad and Money text only changes with the creative itself, and building it is
    # most of the featurisation cost per request; the cache bounds memory, not correctness
    return f"{ad_namespace(candidate)} {money_namespace(candidate)}"


# The same candidate objects serve request after request (the catalogue snapshot's): their text is
# found by identity first, which skips hashing every field of the dataclass. Each entry holds its
# candidate, so the id cannot be reused by another object while the entry lives.
_TEXT_BY_OBJECT_SIZE = 65_536
_text_by_object: dict[int, tuple[Candidate, str]] = {}


def creative_text(candidate: Candidate) -> str:
    held = _text_by_object.get(id(candidate))
    if held is not None and held[0] is candidate:
        return held[1]
    text = _creative_text(candidate)
    if len(_text_by_object) >= _TEXT_BY_OBJECT_SIZE:
        _text_by_object.clear()  # bounded memory; refills from the content cache
    _text_by_object[id(candidate)] = (candidate, text)
    return text


def action_line(candidate: Candidate, label: str | None = None) -> str:
    body = creative_text(candidate)
    return f"{label} {body}" if label else body


def example_lines(
    context: DecisionContext,
    candidates: Sequence[Candidate],
    labelled: tuple[int, float, float] | None = None,
) -> list[str]:
    """A whole multi-line example; `labelled=(index, cost, probability)` labels one action."""
    lines = [shared_line(context)]
    for i, candidate in enumerate(candidates):
        label = cb_label(labelled[1], labelled[2]) if labelled is not None and labelled[0] == i else None
        lines.append(action_line(candidate, label))
    return lines
