"""The test session fails if it leaves a process running.

Every process a test starts, directly or not, inherits this session's mark in its environment,
even a server that daemonised itself away from pytest (pg_ctl's postmaster is re-parented to
init, so it is no child of pytest). When the session finishes, after every fixture is torn down,
each live process carrying the mark, and each child of pytest, is reported, the session's exit
status becomes "tests failed", and the process is stopped so one leak does not outlive the run.

A plugin of its own (registered by tests/conftest.py) so a test can run a session that leaks.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

import psutil
import pytest

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

__all__ = ["SESSION_MARK", "leftover_processes", "stop"]

SESSION_MARK = "ADSERVE_TEST_SESSION_MARK"
GRACE_S = 5.0  # a process told to stop just before the session ended may still be exiting
# Children the interpreter itself keeps until it exits, and which exit with it (pipe EOF).
INTERPRETER_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "torch/_inductor/compile_worker",
)
_leftovers = pytest.StashKey[list[str]]()


def _describe(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline()) or process.name()
        return f"pid {process.pid} ({process.username()}): {command[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _helper(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return any(helper in command for helper in INTERPRETER_HELPERS)


def leftover_processes(mark: str, grace_s: float = GRACE_S) -> list[psutil.Process]:
    """Live processes of this session other than pytest itself: its children (less the
    interpreter's helpers) and any process, wherever re-parented, that carries `mark`."""
    me = psutil.Process()
    found = {child.pid: child for child in me.children(recursive=True) if not _helper(child)}
    for process in psutil.process_iter():
        if process.pid == me.pid or process.pid in found:
            continue
        try:
            if process.environ().get(SESSION_MARK) == mark:
                found[process.pid] = process
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    alive = [process for process in found.values() if _alive(process)]
    if alive:
        _, alive = psutil.wait_procs(alive, timeout=grace_s)
    return [process for process in alive if _alive(process)]


def stop(processes: list[psutil.Process], timeout_s: float = 10.0) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(processes, timeout=timeout_s)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            continue


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test starts a process; a nested session (a test running pytest) sets its own.
    os.environ[SESSION_MARK] = f"{os.getpid()}-{secrets.token_hex(8)}"
    config.stash[_leftovers] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    processes = leftover_processes(os.environ[SESSION_MARK])
    if not processes:
        return
    session.config.stash[_leftovers] = [_describe(process) for process in processes]
    stop(processes)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    leftovers = terminalreporter.config.stash.get(_leftovers, [])
    if not leftovers:
        return
    terminalreporter.section("processes left running", sep="!", red=True, bold=True)
    for line in leftovers:
        terminalreporter.write_line(f"LEFT RUNNING: {line}", red=True)
    terminalreporter.write_line(
        f"{len(leftovers)} process(es) outlived their tests (now stopped); the session fails.",
        red=True,
        bold=True,
    )
