from __future__ import annotations

import subprocess
import sys


def test_bandit_imports_neither_torch_nor_litestar_nor_sqlalchemy() -> None:
    """DESIGN.md: `bandit/` can be trained, tested and benchmarked alone."""
    code = (
        "import sys\n"
        "import adserve.bandit.features, adserve.bandit.rewards, adserve.bandit.records\n"
        "import adserve.bandit.policy, adserve.bandit.ope, adserve.bandit.obd\n"
        "print(sorted(m for m in ('torch', 'litestar', 'sqlalchemy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_reward_join_does_not_load_vowpal_wabbit() -> None:
    code = "import sys\nimport adserve.bandit.rewards\nprint('vowpalwabbit' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
