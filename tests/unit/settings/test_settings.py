from __future__ import annotations

import pytest

from adserve.settings import SettingsError, load_settings

SECRET = "s" * 40


def env(**overrides: str) -> dict[str, str]:
    return {"ADSERVE_SECRET_KEY": SECRET, **overrides}


def test_layers_base_then_env_file_then_environment() -> None:
    base = load_settings("dev", environ=env())
    assert base.env == "dev" and base.server.host == "127.0.0.1"
    prod = load_settings("prod", environ=env())
    assert prod.server.host == "0.0.0.0"  # from prod.toml over base.toml
    overridden = load_settings(
        "prod", environ=env(ADSERVE_SERVER_HOST="10.0.0.5", ADSERVE_SERVER_PORT="9001")
    )
    assert (overridden.server.host, overridden.server.port) == ("10.0.0.5", 9001)


def test_top_level_and_section_variables_map_to_fields() -> None:
    settings = load_settings("dev", environ=env(ADSERVE_DATABASE_URL="postgresql://u@db:5432/ads"))
    assert settings.database.url == "postgresql://u@db:5432/ads"
    assert settings.secret_key == SECRET
    assert not settings.uses_embedded_database


def test_list_values_from_environment() -> None:
    settings = load_settings("dev", environ=env(ADSERVE_SERVER_CORS_ORIGINS='["https://shop.example"]'))
    assert settings.server.cors_origins == ["https://shop.example"]


def test_settings_are_frozen() -> None:
    settings = load_settings("dev", environ=env())
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ADSERVE_SERVER_PORT": "eighty"}, "server.port"),
        ({"ADSERVE_SERVER_PORT": "-1"}, "server.port"),
        ({"ADSERVE_DATABASE_URL": "mysql://x/y"}, "ADSERVE_DATABASE_URL"),
        ({"ADSERVE_SERVING_EPSILON": "1.5"}, "serving.epsilon"),
        ({"ADSERVE_SERVING_POLICY": "magic"}, "serving.policy"),
        ({"ADSERVE_SERVING_CLICK_HEAD_SHORTLIST": "-1"}, "serving.click_head_shortlist"),
        ({"ADSERVE_SECRET_KEY": "short"}, "ADSERVE_SECRET_KEY"),
    ],
)
def test_bad_values_fail_naming_the_setting(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings("dev", environ=env(**overrides))


def test_prod_requires_a_secret_from_the_environment() -> None:
    with pytest.raises(SettingsError, match="ADSERVE_SECRET_KEY"):
        load_settings("prod", environ={})


def test_unknown_environment_names_the_file() -> None:
    with pytest.raises(SettingsError, match="staging"):
        load_settings("staging", environ=env())


def test_dev_generates_and_keeps_a_secret(tmp_path) -> None:
    first = load_settings("dev", environ={"ADSERVE_VAR_DIR": str(tmp_path)})
    second = load_settings("dev", environ={"ADSERVE_VAR_DIR": str(tmp_path)})
    assert len(first.secret_key) >= 32
    assert first.secret_key == second.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_unknown_field_in_a_config_file_is_reported(tmp_path) -> None:
    (tmp_path / "base.toml").write_text("[server]\nprot = 80\n")
    (tmp_path / "dev.toml").write_text("")
    with pytest.raises(SettingsError, match="prot"):
        load_settings("dev", environ=env(), config_dir=tmp_path)
