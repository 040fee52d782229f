"""Writes that do not wait for their sync still reach the disk on their own, soon.

Before the flusher, a store that only took such writes (a proxy serving only sync
requests) kept every line in RAM until some write waited: without bound, and all of
it lost to a SIGKILL.
"""

from __future__ import annotations

import time

from olol.store import DatabaseManager
from olol.store import journal as jr


def on_disk(data) -> bytes:
    return b"".join(path.read_bytes() for _, path in jr.list_journals(data))


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_unwaited_writes_are_flushed_within_the_interval(tmp_path):
    data = tmp_path / "data"
    with DatabaseManager(data, flush_interval_s=0.05) as db:
        with db.transaction(wait=False):
            db.insert("config", {"key": "marker-1", "value": 1})
        assert wait_for(lambda: b"marker-1" in on_disk(data))
        assert db._journal.buffered_bytes == 0


def test_a_large_buffer_is_flushed_at_once(tmp_path):
    data = tmp_path / "data"
    with DatabaseManager(data, flush_interval_s=3600) as db:  # only the size can trigger
        for i in range(40):
            with db.transaction(wait=False):
                db.insert("config", {"key": f"big-{i}", "value": "v" * 40_000})
        assert wait_for(lambda: b"big-39" in on_disk(data) or db._journal.buffered_bytes
                        < jr.KICK_BYTES)
        assert db._journal.buffered_bytes < jr.KICK_BYTES


def test_without_background_work_nothing_is_flushed_behind_the_callers_back(tmp_path):
    data = tmp_path / "data"
    with DatabaseManager(data, background_checkpoints=False, flush_interval_s=0.01) as db:
        with db.transaction(wait=False):
            db.insert("config", {"key": "marker-2", "value": 1})
        time.sleep(0.2)
        assert b"marker-2" not in on_disk(data)
    assert b"marker-2" in on_disk(data) or b"marker-2" in (data / jr.SNAPSHOT).read_bytes()


def test_the_data_folder_and_its_files_are_private(tmp_path):
    import os
    import stat

    data = tmp_path / "new" / "data"
    with DatabaseManager(data) as db:
        db.insert("config", {"key": "k", "value": 1})
        db.checkpoint()
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    files = [p for p in data.iterdir() if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
