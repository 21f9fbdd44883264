"""The bandit's defaults are written in three places with three jobs: `configs/base.toml` (what an
operator reads and overrides), `settings.BanditSettings` (typed, importable without VW) and
`bandit.policy.PolicyConfig` (the library's own, used by the simulator and OPE). They must say
the same thing."""

from __future__ import annotations

from adserve.bandit.policy import PolicyConfig
from adserve.settings import BanditSettings, load_settings


def test_the_three_copies_of_the_bandit_defaults_agree() -> None:
    shipped = load_settings("prod", environ={"ADSERVE_SECRET_KEY": "s" * 40}).bandit
    assert shipped == BanditSettings()
    assert PolicyConfig.from_dict(BanditSettings().policy_dict()) == PolicyConfig()
