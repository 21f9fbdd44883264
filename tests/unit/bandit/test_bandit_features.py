from __future__ import annotations

from adserve.bandit.features import (
    COLD_START_FAMILY,
    MODEL_FAMILY,
    action_line,
    ad_namespace,
    escape,
    example_lines,
    money_namespace,
    price_bucket,
    scorer_family,
    shared_line,
    slot_namespace,
    visitor_namespace,
)
from adserve.domain import Candidate, DecisionContext, Pricing

CONTEXT = DecisionContext(
    placement="homepage-top",
    now=1_700_000_000.0,
    page_category="running shoes",
    keywords=("trail", "10:1|x"),
    device="mobile",
    geo="DE",
    hour=13,
    position=2,
)
CPC = Candidate(
    creative_id=7,
    campaign_id=3,
    advertiser_id=1,
    pricing=Pricing.CPC,
    bid=0.5,
    category="shoes",
    brand="Acme Co",
    price=59.9,
)
CPM = Candidate(creative_id=8, campaign_id=4, advertiser_id=2, pricing=Pricing.CPM, bid=4.0)


def test_escape_encodes_vw_separators_and_percent() -> None:
    assert escape("a b|c:d\te\nf%g") == "a%20b%7Cc%3Ad%09e%0Af%25g"
    assert escape("plain-value_1") == "plain-value_1"
    # distinct raw values stay distinct after escaping
    assert escape("a b") != escape("a_b") != escape("a%20b")


def test_escape_encodes_unicode_whitespace_as_utf8_bytes() -> None:
    assert escape("a\u3000b") == "a%E3%80%80b"


def test_slot_namespace() -> None:
    assert slot_namespace(CONTEXT) == (
        "|Slot placement=homepage-top position=2 page=running%20shoes kw=trail kw=10%3A1%7Cx"
    )


def test_slot_namespace_omits_missing_values() -> None:
    bare = DecisionContext(placement="side", now=0.0)
    assert slot_namespace(bare) == "|Slot placement=side position=0"
    assert visitor_namespace(bare) == "|Visitor hour=0"


def test_visitor_namespace() -> None:
    assert visitor_namespace(CONTEXT) == "|Visitor device=mobile geo=DE hour=13"


def test_ad_namespace() -> None:
    assert ad_namespace(CPC) == "|Ad creative=7 campaign=3 advertiser=1 category=shoes brand=Acme%20Co"
    assert ad_namespace(CPM) == "|Ad creative=8 campaign=4 advertiser=2"


def test_money_namespace_with_price_bucket() -> None:
    assert money_namespace(CPC) == "|Money pricing=cpc bid:0.5 price_bucket=5"
    assert money_namespace(CPM) == "|Money pricing=cpm bid:4"


def test_price_bucket_is_power_of_two() -> None:
    assert price_bucket(10.0) == price_bucket(12.0) == 3
    assert price_bucket(40.0) == 5
    assert price_bucket(None) is None
    assert price_bucket(0.0) is None
    assert price_bucket(float("nan")) is None


def test_shared_and_action_lines() -> None:
    assert shared_line(CONTEXT) == (
        "shared |Slot placement=homepage-top position=2 page=running%20shoes kw=trail kw=10%3A1%7Cx "
        "|Visitor device=mobile geo=DE hour=13"
    )
    # the interest model's score is an offset added by the policy, never a VW feature
    assert action_line(CPM) == "|Ad creative=8 campaign=4 advertiser=2 |Money pricing=cpm bid:4"


def test_each_scorer_family_has_its_own_action_namespaces() -> None:
    assert scorer_family("empirical-ctr:1/100+lift1") == COLD_START_FAMILY
    assert scorer_family("20261130T191208Z") == scorer_family("sim-0005000") == MODEL_FAMILY
    assert scorer_family(None) == MODEL_FAMILY  # rows logged before versions were kept
    cold = action_line(CPM, family=COLD_START_FAMILY)
    assert cold == "|AdEmpirical creative=8 campaign=4 advertiser=2 |MoneyEmpirical pricing=cpm bid:4"
    assert action_line(CPM) == action_line(CPM, family=MODEL_FAMILY) != cold
    labelled = example_lines(CONTEXT, [CPC, CPM], labelled=(1, -0.004, 0.25), family=COLD_START_FAMILY)
    assert labelled[2] == "0:-0.004:0.25 " + cold


def test_example_lines_label_only_the_chosen_action() -> None:
    lines = example_lines(CONTEXT, [CPC, CPM], labelled=(1, -0.004, 0.25))
    assert len(lines) == 3
    assert lines[0].startswith("shared |Slot ")
    assert lines[1] == action_line(CPC)
    assert lines[2] == "0:-0.004:0.25 " + action_line(CPM)


def test_no_line_contains_a_newline_even_with_hostile_values() -> None:
    hostile = DecisionContext(placement="a\nb", now=0.0, keywords=("x\r\ny",), geo="| shared")
    lines = example_lines(hostile, [CPC])
    assert all("\n" not in line and "\r" not in line for line in lines)
    assert lines[0].count("|") == 2  # only the two namespace markers
