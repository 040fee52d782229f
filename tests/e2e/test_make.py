"""`make` says clearly when the Python it would use is too old, before installing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

OLD_PYTHON = """#!/bin/sh
# a stand-in for an old python3: reports 3.9.2
[ "$1" = "-c" ] && exec python3 -c "import sys; sys.version_info=(3,9,2); sys.version='3.9.2 (fake)'
$2"
exec python3 "$@"
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["run", "test"])
def test_make_refuses_an_old_python_in_one_line(tmp_path, target):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    old = tmp_path / "oldpy"
    old.write_text(OLD_PYTHON)
    old.chmod(0o755)
    out = subprocess.run(["make", target, f"PY={old}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "olol needs Python 3.11 or newer" in out.stderr and "3.9.2" in out.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was installed
