"""End-to-end fixtures: real `adserve serve` processes on the session's database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import sessionmaker, settings, tenants  # noqa: F401 - re-exported fixtures

ROOT = Path(__file__).resolve().parents[2]
# Debian's Chromium, started the way this machine allows (no sandbox as root, no background
# connections to a network that is not there).
CHROMIUM = os.environ.get("ADSERVE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 60.0) -> None:
    """Polls /ready: a readiness probe, not a sleep; fails fast if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready:\n{log_path.read_text()[-3000:]}")


@contextmanager
def run_server(
    database_url: str, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    env = {
        **os.environ,
        "ADSERVE_DATABASE_URL": database_url,
        "ADSERVE_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "ADSERVE_VAR_DIR": str(tmp_path / f"var-{port}"),
        "ADSERVE_WRITER_SPOOL_DIR": str(tmp_path / f"spool-{port}"),
        "ADSERVE_MODELS_DIR": str(tmp_path / "models"),
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "adserve", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log_path)
        yield Server(url=url, process=process, log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(database_url, tmp_path_factory.mktemp("server")) as running:
        yield running
