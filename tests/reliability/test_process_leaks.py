"""Finding 5 (tests): "a full make test run left the fault tests' private Postgres running
afterwards". The private server helper now stops a restarted server, and a session that leaves
any process running fails (tests/process_leaks.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.private_postgres import private_postgres_server

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _reaped(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while psutil.pid_exists(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


@pytest.mark.slow
def test_a_restarted_private_postgres_is_stopped_at_teardown() -> None:
    fixture = private_postgres_server("adserve-reliability-pg-")
    server = next(fixture)
    first = _postmaster(server.data_dir)
    server.stop()
    # As in a real outage test, the first postmaster is long gone (reaped) by teardown; while it
    # lingered as a zombie, pgserver's cleanup still happened to stop the restarted server.
    assert _reaped(first)
    server.start()  # what the fault tests do mid-test
    restarted = _postmaster(server.data_dir)
    assert restarted != first
    try:
        with pytest.raises(StopIteration):
            next(fixture)
        assert _gone(restarted), f"the restarted private Postgres (pid {restarted}) is still running"
    finally:
        if not _gone(restarted, 0):
            psutil.Process(restarted).terminate()  # do not leak it when the assertion fails


LEAKY_TEST = """
import subprocess
from pathlib import Path


def test_leaves_processes_behind():
    child = subprocess.Popen(["sleep", "300"])
    # a daemon: its shell exits at once and init adopts it, as pg_ctl's postmaster is
    subprocess.run(["sh", "-c", "sleep 301 & echo $! > daemon.pid"], check=True)
    Path("child.pid").write_text(str(child.pid))
"""

CLEAN_TEST = """
import subprocess


def test_waits_for_its_process():
    subprocess.run(["sleep", "0.1"], check=True)
"""


def _session(folder: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text('pytest_plugins = ["tests.process_leaks"]\n')
    (folder / "test_it.py").write_text(textwrap.dedent(test_source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_session_that_leaves_a_process_running_fails(tmp_path) -> None:
    folder = tmp_path / "leaky"
    try:
        result = _session(folder, LEAKY_TEST)
        output = result.stdout + result.stderr
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
        assert "1 passed" in output and "LEFT RUNNING" in output, output
        assert "sleep 300" in output and "sleep 301" in output, output
    finally:
        pids = [
            int((folder / name).read_text())
            for name in ("child.pid", "daemon.pid")
            if (folder / name).exists()
        ]
        for pid in pids:
            if not _gone(pid, 0):
                psutil.Process(pid).kill()  # do not leak them when an assertion fails
    assert len(pids) == 2 and all(_gone(pid) for pid in pids), "the leaked processes were not stopped"


@pytest.mark.slow
def test_a_session_that_cleans_up_passes(tmp_path) -> None:
    result = _session(tmp_path / "clean", CLEAN_TEST)
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
