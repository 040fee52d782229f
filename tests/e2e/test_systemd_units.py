"""The shipped systemd units: ``systemd-analyze verify`` clean and a
``systemd-analyze security`` exposure within the bar (issue 12 item 6). Skipped where
systemd-analyze is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = next((p for p in (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
                     if (p / "sysinit.target").exists()), None)

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

UNITS = [("olol-proxy.service", 2.0), ("olol-worker.service", 3.0)]


@pytest.mark.parametrize("unit,bar", UNITS)
def test_security_exposure_is_within_the_bar(unit, bar):
    out = subprocess.run([ANALYZE, "security", "--offline=true", str(ROOT / "systemd" / unit)],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= bar, out.stdout


@pytest.mark.skipif(SYSTEM_UNITS is None, reason="no system unit folder to verify against")
@pytest.mark.parametrize("unit,bar", UNITS)
def test_verify_is_clean(tmp_path, unit, bar):
    units = tmp_path / "etc" / "systemd" / "system"
    shutil.copytree(SYSTEM_UNITS, units, symlinks=True)
    shutil.copy(ROOT / "systemd" / unit, units / unit)
    exe = tmp_path / "opt" / "olol" / ".venv" / "bin" / "olol"  # where the units expect it
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    out = subprocess.run([ANALYZE, "verify", f"--root={tmp_path}", unit],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
