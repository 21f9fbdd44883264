"""The package layers hold: a lower package never imports a higher one, and no two packages import
each other. The contracts are pyproject.toml's [tool.importlinter]; import-linter reads the source
and imports nothing, so this needs no database."""

from __future__ import annotations

from pathlib import Path

from importlinter import configuration
from importlinter.application import use_cases

ROOT = Path(__file__).resolve().parents[2]


def test_packages_import_one_way(capsys) -> None:
    # The use case, not `importlinter.cli.lint_imports`: the CLI reconfigures logging for the whole
    # process (dictConfig disables every existing logger), which blinds later tests' caplog.
    configuration.configure()
    passed = use_cases.lint_imports(
        config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True
    )
    assert passed, capsys.readouterr().out
