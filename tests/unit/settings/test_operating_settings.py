"""The operating settings: metrics off by default and never on without a token; the log format."""

from __future__ import annotations

import pytest

from adserve.settings import SettingsError, load_settings

ENVIRON = {"ADSERVE_SECRET_KEY": "s" * 40}


def test_metrics_are_off_and_logs_are_json_by_default() -> None:
    settings = load_settings("prod", environ=ENVIRON)
    assert not settings.metrics.enabled
    assert settings.log_format == "json" and not settings.log_requests  # an access line costs CPU


def test_metrics_need_a_token_from_the_environment() -> None:
    with pytest.raises(SettingsError, match="ADSERVE_METRICS_TOKEN"):
        load_settings("prod", environ={**ENVIRON, "ADSERVE_METRICS_ENABLED": "true"})
    settings = load_settings(
        "prod", environ={**ENVIRON, "ADSERVE_METRICS_ENABLED": "true", "ADSERVE_METRICS_TOKEN": "t" * 16}
    )
    assert settings.metrics.enabled and settings.metrics.token == "t" * 16


def test_text_logs_for_a_terminal() -> None:
    assert load_settings("dev", environ={**ENVIRON, "ADSERVE_LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings("dev", environ={**ENVIRON, "ADSERVE_LOG_FORMAT": "xml"})
