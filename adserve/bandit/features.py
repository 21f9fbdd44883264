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

Where a score is off depends on which scorer gave it, so the action namespaces carry the scorer's
family (`scorer_family`): a trained interest model's versions write `|Ad` and `|Money`, the
empirical cold-start scorer writes `|AdEmpirical` and `|MoneyEmpirical`. VW hashes a feature with
its whole namespace name, so the two families learn disjoint residual weights (the first letter,
which interactions key on, is the same): the corrections learned against the cold start never
bend the first trained model's ranking, and a fallback to the cold start finds its own again.

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
    "COLD_START_FAMILY",
    "MODEL_FAMILY",
    "action_line",
    "ad_namespace",
    "cb_label",
    "escape",
    "example_lines",
    "money_namespace",
    "number",
    "price_bucket",
    "scorer_family",
    "shared_line",
    "slot_namespace",
    "visitor_namespace",
]

_SPECIAL = re.compile(r"[%|:\s]")

MODEL_FAMILY = "model"
COLD_START_FAMILY = "empirical"
_COLD_START_PREFIX = "empirical-ctr"  # `EmpiricalCTRScorer.version`


def scorer_family(scorer_version: str | None) -> str:
    """Whose errors a residual learned against this scorer version corrects: "empirical" for the
    empirical cold-start scorer, "model" for everything else (the interest model's versions are
    retrains of one model, so a residual carries from one to the next; an unknown or missing
    version is taken to be the model's)."""
    if scorer_version and scorer_version.startswith(_COLD_START_PREFIX):
        return COLD_START_FAMILY
    return MODEL_FAMILY


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
_text_by_object: dict[int, tuple[Candidate, dict[str, str]]] = {}


def _family_text(text: str, family: str) -> str:
    if family == MODEL_FAMILY:
        return text
    suffix = family.capitalize()
    return text.replace("|Ad ", f"|Ad{suffix} ", 1).replace("|Money ", f"|Money{suffix} ", 1)


def creative_text(candidate: Candidate, family: str = MODEL_FAMILY) -> str:
    held = _text_by_object.get(id(candidate))
    if held is not None and held[0] is candidate:
        texts = held[1]
    else:
        texts = {}
        if len(_text_by_object) >= _TEXT_BY_OBJECT_SIZE:
            _text_by_object.clear()  # bounded memory; refills from the content cache
        _text_by_object[id(candidate)] = (candidate, texts)
    text = texts.get(family)
    if text is None:
        text = texts[family] = _family_text(_creative_text(candidate), family)
    return text


def action_line(candidate: Candidate, label: str | None = None, family: str = MODEL_FAMILY) -> str:
    body = creative_text(candidate, family)
    return f"{label} {body}" if label else body


def example_lines(
    context: DecisionContext,
    candidates: Sequence[Candidate],
    labelled: tuple[int, float, float] | None = None,
    family: str = MODEL_FAMILY,
) -> list[str]:
    """A whole multi-line example; `labelled=(index, cost, probability)` labels one action;
    `family` is the scorer family whose residual it reads or teaches (`scorer_family`)."""
    lines = [shared_line(context)]
    for i, candidate in enumerate(candidates):
        label = cb_label(labelled[1], labelled[2]) if labelled is not None and labelled[0] == i else None
        lines.append(action_line(candidate, label, family))
    return lines
