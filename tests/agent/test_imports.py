"""The node agent is light: importing it loads neither the store (TinyDB) nor Flask."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_agent_does_not_load_the_coordinator():
    code = ("import sys, olol.agent.agent, olol.agent.cli; "
            "print(sorted(m for m in ('tinydb', 'olol.store', 'flask', 'olol.queue', "
            "'olol.dispatcher') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_public_names_still_resolve():
    import olol

    assert olol.get_db.__module__.startswith("olol.store")
    assert olol.QueueManager.__name__ == "QueueManager"
