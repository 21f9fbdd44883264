"""Typed, frozen settings: configs/base.toml, then configs/<ADSERVE_ENV>.toml, then ADSERVE_* variables.

An environment variable names a field as ADSERVE_<SECTION>_<FIELD> (``ADSERVE_DATABASE_URL``) or
ADSERVE_<FIELD> for top-level fields (``ADSERVE_SECRET_KEY``). Any bad or missing value raises
`SettingsError` naming the setting, so a misconfigured process fails at start-up, not per request.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = ["CONFIG_DIR", "Settings", "SettingsError", "load_settings"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MIN_SECRET_LENGTH = 32
MIN_METRICS_TOKEN_LENGTH = 16


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class DatabaseSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = ""
    embedded_dir: str = "var/pg"
    pool_size: int = 10
    max_overflow: int = 10
    echo: bool = False
    statement_timeout_ms: int = 30000  # every connection's statement_timeout; 0 = the server's default


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 65536
    cors_origins: list[str] = msgspec.field(default_factory=list)
    # Requests a minute one client address may make to the public endpoints, per process; 0 = none.
    rate_limit_per_minute: int = 600
    # Freeze the start-up heap and collect young objects less often (adserve/serving/heap.py).
    tune_gc: bool = True


class AdminSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    page_size_default: int = 50
    page_size_max: int = 500


class ServingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Tracking tokens (impression and click URLs) expire after this long; a served decision's
    # budget reservation lasts as long, so it bounds how long budget is held for unfired URLs.
    token_ttl_s: int = 3600
    catalog_refresh_s: float = 2.0
    scorer: Literal["empirical", "interest"] = "interest"
    policy: Literal["epsilon_greedy", "vw"] = "vw"
    epsilon: float = 0.1
    ctr_prior_clicks: float = 1.0
    ctr_prior_impressions: float = 100.0
    history_lift: float = 1.0
    attribution_window_s: int = 604800
    max_events_per_batch: int = 500
    history_length: int = 50
    history_days: float = 30.0  # a decision reads the user's last history_length events of these days
    # per-process user state (serving/user_state.py): how many users, and the longest an entry
    # is trusted without a notification (it heals a missed one)
    user_state_cache_size: int = 100_000
    user_state_max_age_s: float = 300.0
    torch_threads: int = 1  # intra-op threads of a serving process's interest model passes
    model_poll_s: float = 5.0
    interest_precision: Literal["fp32", "int8"] = "fp32"
    # candidates per decision the click head scores (the fusion's top by its other features); 0: all
    click_head_shortlist: int = 32


class WriterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    flush_rows: int = 500
    flush_ms: int = 200
    spool_dir: str = "var/spool"
    spool_max_bytes: int = 256 * 1024 * 1024


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """/metrics (Prometheus exposition): off unless enabled, and then only with the bearer token."""

    enabled: bool = False
    token: str = ""  # ADSERVE_METRICS_TOKEN; scrapers send `Authorization: Bearer <token>`


class DemoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seed: int = 7


class JobsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Scheduled jobs (adserve/jobs/): cadences in seconds, retries, the retrain window."""

    enabled: bool = True  # `adserve serve` also competes to run the jobs; `adserve worker` always does
    leader_poll_s: float = 5.0
    budget_reset_s: float = 60.0
    rollup_recent_s: float = 3600.0
    rollup_recent_days: int = 2
    rollup_full_s: float = 86400.0
    rollup_full_days: int = 8
    purge_s: float = 3600.0
    bandit_s: float = 30.0
    retrain_s: float = 86400.0
    retrain_days: float = 30.0
    retrain_max_epochs: int = 0  # 0: early stopping decides
    retrain_threads: int = 1
    retrain_timeout_s: float = 3600.0
    max_attempts: int = 3
    retry_base_s: float = 2.0
    retry_max_s: float = 60.0


class RetentionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Whole daily partitions of the log tables are dropped once past these (adserve/jobs/partitions.py)."""

    events_days: int = 90  # behaviour events (user_events)
    decisions_days: int = 90  # the decision log: decisions, impressions, clicks (daily_stats stays)
    premake_days: int = 7  # partitions are created this many days ahead


class BanditSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The VW bandit (`adserve.bandit.policy.PolicyConfig`) and its reward join and learner."""

    exploration: Literal["squarecb", "epsilon_greedy"] = "squarecb"
    top_k: int = 10
    epsilon: float = 0.05
    gamma_initial: float = 20_000.0
    gamma_scale: float = 20.0
    gamma_exponent: float = 0.5
    learning_rate: float = 0.01
    bit_precision: int = 18
    interactions: list[str] = msgspec.field(default_factory=list)
    seed: int = 0
    max_importance_weight: float = 1.0
    model_residual_weight: float = 0.25
    plausible_share: float = 0.5
    objective: Literal["revenue", "clicks"] = "revenue"
    revenue_scale: float = 1.0
    conversion_weight: float = 0.0
    reward_window_s: float = 1800.0
    learn_batch_max: int = 50_000

    def policy_dict(self) -> dict[str, Any]:
        """The `PolicyConfig.from_dict` input (this section less the join and learner settings)."""
        data = msgspec.structs.asdict(self)
        for name in ("reward_window_s", "learn_batch_max", "objective", "revenue_scale", "conversion_weight"):
            data.pop(name)
        data["cost"] = {
            "objective": self.objective,
            "revenue_scale": self.revenue_scale,
            "conversion_weight": self.conversion_weight,
        }
        return data


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    env: Literal["dev", "test", "prod"] = "dev"
    secret_key: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"  # json: one object a line; text: for a terminal
    # one INFO line per request (route template, status, duration); off by default: at load it costs
    # about 0.3 ms of CPU per decision (bench/serving.py profile), a tenth of the decision itself
    log_requests: bool = False
    models_dir: str = "models"
    var_dir: str = "var"
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    admin: AdminSettings = msgspec.field(default_factory=AdminSettings)
    serving: ServingSettings = msgspec.field(default_factory=ServingSettings)
    writer: WriterSettings = msgspec.field(default_factory=WriterSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    demo: DemoSettings = msgspec.field(default_factory=DemoSettings)
    jobs: JobsSettings = msgspec.field(default_factory=JobsSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    bandit: BanditSettings = msgspec.field(default_factory=BanditSettings)

    @property
    def uses_embedded_database(self) -> bool:
        return not self.database.url

    def path(self, relative: str) -> Path:
        """Resolves a configured path against the working directory."""
        return Path(relative).expanduser().resolve()


_SECTIONS = {name for name, field_type in Settings.__annotations__.items() if field_type.endswith("Settings")}


def _deep_merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc


def _env_value(raw: str) -> Any:
    """Environment values are strings; lists may be JSON or comma-separated."""
    stripped = raw.strip()
    if stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"not a JSON list: {raw!r}") from exc
    return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    top_level = set(Settings.__struct_fields__) - _SECTIONS
    for name, raw in environ.items():
        if not name.startswith("ADSERVE_"):
            continue
        key = name.removeprefix("ADSERVE_").lower()
        if key in top_level:
            overrides[key] = _env_value(raw)
            continue
        section, _, field_name = key.partition("_")
        if section in _SECTIONS:
            section_type = Settings.__annotations__[section]
            fields = globals()[section_type].__struct_fields__
            if field_name in fields:
                overrides.setdefault(section, {})[field_name] = _env_value(raw)
    return overrides


def _dev_secret(var_dir: Path) -> str:
    """Dev and demo runs keep a generated secret in var/ so signed URLs survive restarts."""
    path = var_dir / "secret_key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _validate(settings: Settings) -> Settings:
    url = settings.database.url
    if url and not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
        raise SettingsError(
            "database.url (ADSERVE_DATABASE_URL) must be a postgresql:// URL, got scheme "
            f"{url.split(':', 1)[0]!r}"
        )
    if len(settings.secret_key) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"secret_key (ADSERVE_SECRET_KEY) must be set to at least {MIN_SECRET_LENGTH} characters"
        )
    positive = {
        "server.port": settings.server.port,
        "server.workers": settings.server.workers,
        "server.max_body_bytes": settings.server.max_body_bytes,
        "database.pool_size": settings.database.pool_size,
        "serving.token_ttl_s": settings.serving.token_ttl_s,
        "writer.flush_rows": settings.writer.flush_rows,
        "writer.flush_ms": settings.writer.flush_ms,
        "jobs.leader_poll_s": settings.jobs.leader_poll_s,
        "jobs.max_attempts": settings.jobs.max_attempts,
        "jobs.retrain_threads": settings.jobs.retrain_threads,
        "retention.events_days": settings.retention.events_days,
        "retention.decisions_days": settings.retention.decisions_days,
        "retention.premake_days": settings.retention.premake_days,
    }
    for name, value in positive.items():
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}")
    if settings.serving.click_head_shortlist < 0:
        raise SettingsError(
            "serving.click_head_shortlist must be 0 (every candidate) or positive, "
            f"got {settings.serving.click_head_shortlist}"
        )
    if settings.server.rate_limit_per_minute < 0:
        raise SettingsError(
            f"server.rate_limit_per_minute must be 0 (none) or positive, got {settings.server.rate_limit_per_minute}"
        )
    if settings.database.statement_timeout_ms < 0:
        raise SettingsError(
            f"database.statement_timeout_ms must be 0 (none) or positive, got {settings.database.statement_timeout_ms}"
        )
    if settings.metrics.enabled and len(settings.metrics.token) < MIN_METRICS_TOKEN_LENGTH:
        raise SettingsError(
            f"metrics.token (ADSERVE_METRICS_TOKEN) must be at least {MIN_METRICS_TOKEN_LENGTH} characters "
            "when metrics.enabled is true"
        )
    if not 0.0 <= settings.serving.epsilon <= 1.0:
        raise SettingsError(f"serving.epsilon must be within [0, 1], got {settings.serving.epsilon}")
    if not settings.server.public_url.startswith(("http://", "https://")):
        raise SettingsError("server.public_url must start with http:// or https://")
    # The full rollup recomputes its days from the raw log and clicks attribute purchases: the
    # decision log must outlive both, or a rollup would overwrite a reported day with zeros.
    needed_days = max(settings.jobs.rollup_full_days, -(-settings.serving.attribution_window_s // 86400)) + 1
    if settings.retention.decisions_days < needed_days:
        raise SettingsError(
            f"retention.decisions_days must be at least {needed_days} (jobs.rollup_full_days and "
            f"serving.attribution_window_s, plus a day), got {settings.retention.decisions_days}"
        )
    return settings


def load_settings(
    env: str | None = None,
    environ: dict[str, str] | None = None,
    config_dir: Path = CONFIG_DIR,
) -> Settings:
    """Builds settings for `env` (default: $ADSERVE_ENV or "dev") from the layered sources."""
    environ = dict(os.environ if environ is None else environ)
    env = env or environ.get("ADSERVE_ENV", "dev")
    env_file = config_dir / f"{env}.toml"
    if not env_file.exists():
        raise SettingsError(f"ADSERVE_ENV={env!r}: no such config file {env_file}")
    layered = _deep_merge(_read_toml(config_dir / "base.toml"), _read_toml(env_file))
    layered = _deep_merge(layered, _env_overrides(environ))
    layered["env"] = env
    if not layered.get("secret_key") and env != "prod":
        layered["secret_key"] = _dev_secret(Path(layered.get("var_dir", "var")))
    try:
        settings = msgspec.convert(layered, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        where = message.rsplit("at `$.", 1)
        name = where[1].rstrip("`") if len(where) == 2 else "settings"
        raise SettingsError(f"setting {name}: {where[0].removesuffix(' - ').strip()}") from exc
    return _validate(settings)
