"""The CLI on an embedded Postgres: data survives restarts and the server stops when we exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def adserve(args: list[str], data_dir: Path, var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ADSERVE_DATABASE_URL"}
    env |= {"ADSERVE_DATABASE_EMBEDDED_DIR": str(data_dir), "ADSERVE_VAR_DIR": str(var_dir)}
    return subprocess.run(
        [sys.executable, "-m", "adserve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def postgres_running_on(data_dir: Path) -> bool:
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(data_dir) in " ".join(process.info["cmdline"] or []):
            return True
    return False


@pytest.fixture
def data_root() -> Path:
    # Not under pytest's basetemp: another pytest run resets /tmp/pytest-of-<user> to mode 0700,
    # which locks the `pgserver` system user (Postgres as root) out of its data folder.
    return Path(tempfile.mkdtemp(prefix="adserve-cli-"))


def test_embedded_database_survives_restarts_and_stops_cleanly(data_root: Path) -> None:
    data_dir, var_dir = data_root / "pg", data_root / "var"
    migrated = adserve(["migrate"], data_dir, var_dir)
    assert migrated.returncode == 0, migrated.stderr
    assert (data_dir / "PG_VERSION").exists()
    assert not postgres_running_on(data_dir)

    first = adserve(["keys", "create", "--role", "admin"], data_dir, var_dir)
    second = adserve(["keys", "create", "--role", "admin"], data_dir, var_dir)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    # the second process sees the first one's row: the data folder outlived the server process
    assert "admin key #1;" in first.stdout and "admin key #2;" in second.stdout
    keys = [re.search(r"^adsk_\S+$", out.stdout, re.M) for out in (first, second)]
    assert all(keys) and keys[0].group(0) != keys[1].group(0)
    assert first.stdout.count(keys[0].group(0)) == 1  # printed once
    assert not postgres_running_on(data_dir)


def test_keys_create_validates_role_scope(data_root: Path) -> None:
    result = adserve(["keys", "create", "--role", "manager"], data_root / "pg", data_root / "var")
    assert result.returncode == 2
    assert "advertiser_id" in result.stderr


def test_bad_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "ADSERVE_SERVER_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "adserve", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr
