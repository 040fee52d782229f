"""The CLI type-checks (``mypy olol/cli``; the settings are in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.conftest import ROOT

pytest.importorskip("mypy")


@pytest.mark.slow
def test_mypy_finds_nothing_in_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "olol/cli", "--ignore-missing-imports",
         "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
