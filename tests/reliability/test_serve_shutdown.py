"""Finding 5: SIGTERM or SIGINT to `adserve serve` with its embedded Postgres stops every process
it started (systemd, Docker and Kubernetes send SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_with_embedded_postgres_stops_everything(tmp_path: Path, signum: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSERVE_")}
    env |= {
        "ADSERVE_ENV": "test",
        "ADSERVE_VAR_DIR": str(tmp_path / "var"),
        "ADSERVE_DATABASE_EMBEDDED_DIR": str(tmp_path / "var" / "pg"),
        "ADSERVE_WRITER_SPOOL_DIR": str(tmp_path / "var" / "spool"),
        "ADSERVE_MODELS_DIR": str(tmp_path / "models"),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "adserve", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, tmp_path / "serve.log", timeout_s=180.0)
        started = psutil.Process(process.pid).children(recursive=True)
        postmasters = [
            p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert postmasters, "the embedded Postgres was not found"
        process.send_signal(signum)
        returncode = process.wait(timeout=60)
        assert returncode in (0, 128 + signum, 130), returncode
        _, alive = psutil.wait_procs([*started, *postmasters], timeout=30)
        assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
