"""Retention settings: separate windows for behaviour events and the decision log, and a decision
log that outlives what the rollups and attribution read back."""

from __future__ import annotations

import pytest

from adserve.settings import SettingsError, load_settings

SECRET = "s" * 40


def test_events_and_decision_log_windows_come_from_the_environment() -> None:
    settings = load_settings(
        "prod",
        environ={
            "ADSERVE_SECRET_KEY": SECRET,
            "ADSERVE_RETENTION_EVENTS_DAYS": "30",
            "ADSERVE_RETENTION_DECISIONS_DAYS": "400",
        },
    )
    assert (settings.retention.events_days, settings.retention.decisions_days) == (30, 400)
    assert settings.retention.premake_days == 7


def test_a_decision_log_shorter_than_the_full_rollup_is_refused() -> None:
    # jobs.rollup_full_days 8 and a 7-day attribution window: 9 days at least
    with pytest.raises(SettingsError, match=r"retention\.decisions_days must be at least 9"):
        load_settings("prod", environ={"ADSERVE_SECRET_KEY": SECRET, "ADSERVE_RETENTION_DECISIONS_DAYS": "8"})
    assert (
        load_settings(
            "prod", environ={"ADSERVE_SECRET_KEY": SECRET, "ADSERVE_RETENTION_DECISIONS_DAYS": "9"}
        ).retention.decisions_days
        == 9
    )


@pytest.mark.parametrize("name", ["EVENTS_DAYS", "PREMAKE_DAYS"])
def test_retention_windows_must_be_positive(name: str) -> None:
    with pytest.raises(SettingsError, match=rf"retention\.{name.lower()} must be positive"):
        load_settings("prod", environ={"ADSERVE_SECRET_KEY": SECRET, f"ADSERVE_RETENTION_{name}": "0"})
