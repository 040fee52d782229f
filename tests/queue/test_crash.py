"""Crash safety of admission: a sync request does not wait for its journal sync, a job does.

After a crash a sync request is either absent (its line never reached the disk) or
``interrupted`` (or finished, when that change was written); a job whose enqueue
returned is always there. See "What survives a crash" in docs/store.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from olol.queue import RESTART_ERROR, QueueManager
from olol.queue.records import TABLE
from olol.store import DatabaseManager
from olol.store import journal as jr
from olol.store.cli import check_data_dir
from tests.queue.conftest import make_request

ROOT = Path(__file__).resolve().parents[2]


def journal_ids(path: Path) -> list[str]:
    """Request ids in the journal's queue records, in file order."""
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        for op in jr.decode_line(line) or []:
            if op[0] == "p" and op[1] == TABLE:
                out.append(op[3]["id"])
    return out


def test_sync_enqueue_does_not_wait_for_a_sync_and_a_job_enqueue_does(tmp_path, clock):
    synced: list[int] = []
    data = tmp_path / "data"
    db = DatabaseManager(data, clock=clock, background_checkpoints=False,
                         sync=lambda fd: synced.append(os.fstat(fd).st_size))
    try:
        q = QueueManager(db, clock=clock)
        _, path = jr.list_journals(data)[-1]
        before = len(synced)
        s, pos = q.enqueue(make_request(kind="sync"))
        assert len(synced) == before  # no fsync on a sync request's admission...
        assert pos == 1 and q.get(s)["status"] == "pending"
        assert s not in journal_ids(path)  # ...its line is still in the buffer
        assert [d["id"] for d in q.dequeue(1)] == [s]  # dispatchable at once
        assert len(synced) == before  # nor on its claim

        j, _ = q.enqueue(make_request(kind="job"))
        assert len(synced) == before + 1  # a job waits for exactly one fsync...
        assert synced[-1] == path.stat().st_size  # ...taken after its line was written
        assert journal_ids(path) == [s, s, j]  # which covers the earlier lines, in order

        s2, _ = q.enqueue(make_request(kind="sync"))
        assert len(synced) == before + 1
        assert q.update_request_status(s2, "completed")  # a sync completion does not wait
        assert len(synced) == before + 1
        assert q.dequeue(ids=[j])  # a job's claim waits (it counts an attempt)...
        assert len(synced) == before + 2
        assert q.update_request_status(j, "completed")  # ...and so does its completion
        assert len(synced) == before + 3
        assert journal_ids(path) == [s, s, j, s2, s2, j, j]
    finally:
        db.close()


# One crash per scenario: the steps run, then the process dies without closing.
SCENARIO = """
import json, os, sys
from olol.queue import QueueManager
from olol.store import DatabaseManager
from tests.queue.conftest import make_request

db = DatabaseManager(sys.argv[1], background_checkpoints=False)
q = QueueManager(db)
ids = {"sync": [], "job": []}
for step in sys.argv[2].split(","):
    if step in ("sync", "job"):
        ids[step].append(q.enqueue(make_request(kind=step, prompt=step))[0])
    elif step in ("claim-sync", "claim-job"):
        assert q.dequeue(ids=ids[step[6:]][:1], server="n1")
    elif step == "complete-sync":
        assert q.update_request_status(ids["sync"][0], "completed")
    elif step == "cancel-sync":
        assert q.cancel(ids["sync"][0])
    else:
        raise SystemExit("unknown step " + step)
print(json.dumps(ids), flush=True)
os._exit(0)
"""


@pytest.mark.parametrize(
    "steps,sync_after,job_after",
    [
        # Nothing waited after the sync request: it never existed.
        ("job,sync", None, "pending"),
        ("job,sync,claim-sync", None, "pending"),
        # A later job's fsync carries the sync request's lines with it.
        ("sync,job", "interrupted", "pending"),
        ("sync,claim-sync,job", "interrupted", "pending"),
        # A sync request's later changes do not wait either: with nothing waited after
        # them they are lost with the record; a later waited write carries them.
        ("sync,claim-sync,complete-sync", None, None),
        ("sync,cancel-sync", None, None),
        ("sync,claim-sync,complete-sync,job", "completed", "pending"),
        ("sync,cancel-sync,job", "cancelled", "pending"),
        # A job's claim does not wait either: lost or not, the job runs again.
        ("job,claim-job", None, "pending"),
        ("job,claim-job,sync,job", "interrupted", "pending"),
    ],
)
def test_after_a_crash_a_sync_request_is_absent_or_interrupted_and_a_job_is_there(
    tmp_path, steps, sync_after, job_after
):
    out = subprocess.run([sys.executable, "-c", SCENARIO, str(tmp_path), steps],
                         cwd=ROOT, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    ids = json.loads(out.stdout)
    ok, lines = check_data_dir(tmp_path)
    assert ok, lines
    with DatabaseManager(tmp_path, background_checkpoints=False) as db:
        q = QueueManager(db)
        counts = q.recover()
        for rid in ids["sync"]:
            sync = q.get(rid)
            assert (sync and sync["status"]) == sync_after
            if sync_after == "interrupted":
                assert sync["error"] == RESTART_ERROR
        assert counts["interrupted"] == (sync_after == "interrupted")
        for rid in ids["job"]:
            assert q.get(rid)["status"] == job_after
        # every job runs (again); the sync request never does
        assert [d["id"] for d in q.dequeue(10)] == ids["job"]


def run_queue_crash_rounds(tmp_path: Path, kills: int, seed: int) -> tuple[int, int, int]:
    """SIGKILL the queue writer at random moments; after each kill, reopen, recover and
    check every invariant. Returns (acknowledged jobs, acknowledged sync requests,
    acknowledged sync requests that were absent after a crash)."""
    rng = random.Random(seed)
    issued: dict[str, str] = {}  # id -> kind, enqueue started
    acked: dict[str, str] = {}  # id -> kind, enqueue returned
    finishing: set[str] = set()  # completion started
    finished: set[str] = set()  # completion returned
    seen: set[str] = set()  # present after an earlier crash
    lost_sync: set[str] = set()
    for run in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.queue.crash_writer", str(tmp_path), str(run)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout.readline().strip() == b"READY", proc.stderr.read().decode()
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        # read(), not communicate(): readline() above may hold later lines in its buffer
        out = proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait(timeout=30)
        for raw in out.decode().splitlines(keepends=True):
            if not raw.endswith("\n"):
                continue  # a last line cut by the kill
            parts = raw.split()
            if len(parts) == 3 and parts[0] == "I":
                issued[parts[2]] = parts[1]
            elif len(parts) == 3 and parts[0] == "A":
                acked[parts[2]] = parts[1]
            elif len(parts) == 2 and parts[0] == "F":
                finishing.add(parts[1])
            elif len(parts) == 2 and parts[0] == "C":
                finished.add(parts[1])
        ok, lines = check_data_dir(tmp_path)
        assert ok, lines
        with DatabaseManager(tmp_path, background_checkpoints=False) as db:
            q = QueueManager(db, max_depth=1_000_000, max_depth_per_model=1_000_000,
                             max_finished_sync=1_000_000)
            q.recover()
            recs = {d["id"]: dict(d) for d in db.all(TABLE)}
        for rid, rec in recs.items():
            assert issued.get(rid) == rec["kind"], f"{rid} was never enqueued as {rec['kind']}"
            if rec["kind"] == "sync":
                assert rec["status"] in ("interrupted", "completed"), (rid, rec["status"])
            else:
                assert rec["status"] in ("pending", "completed"), (rid, rec["status"])
            if rec["status"] == "completed":
                assert rid in finishing, f"{rid} completed but never finished"
        for rid, kind in acked.items():
            if kind == "job":
                assert rid in recs, f"acknowledged job {rid} lost after kill {run}"
            elif rid not in recs:
                lost_sync.add(rid)
        for rid in finished:
            if issued.get(rid) != "job":
                continue  # a sync completion does not wait: it may be lost (then interrupted)
            assert recs[rid]["status"] == "completed", f"acknowledged completion of {rid} lost"
            assert recs[rid]["result"] == {"response": rid}
        assert seen <= recs.keys(), f"records vanished after kill {run}: {seen - recs.keys()}"
        seen = set(recs)
    kinds = list(acked.values())
    return kinds.count("job"), kinds.count("sync"), len(lost_sync)


def test_queue_sigkill_at_random_moments(tmp_path):
    jobs, syncs, _ = run_queue_crash_rounds(tmp_path, kills=3, seed=1)
    assert jobs > 10 and syncs > 10


@pytest.mark.slow
def test_queue_sigkill_many_times(tmp_path):
    jobs, syncs, lost = run_queue_crash_rounds(tmp_path, kills=15, seed=2)
    assert jobs > 200 and syncs > 200
    print(f"{jobs} jobs and {syncs} sync requests acknowledged; "
          f"{lost} sync requests were absent after a crash")


JOB_KILLER = """
import json, os, sys
from olol.queue import QueueManager
from olol.store import DatabaseManager
from tests.queue.conftest import make_request

db = DatabaseManager(sys.argv[1], background_checkpoints=False)
q = QueueManager(db, max_attempts=3)
counts = q.recover()
if sys.argv[2] == "enqueue":
    q.enqueue(make_request(kind="job"))
claimed = q.dequeue(1, server="n1")  # the job starts running... and takes the proxy down
print(json.dumps({"counts": counts, "claimed": len(claimed)}), flush=True)
os._exit(0)
"""


def test_a_job_that_takes_the_proxy_down_fails_after_max_attempts(tmp_path):
    seen = []
    for run in range(4):
        out = subprocess.run([sys.executable, "-c", JOB_KILLER, str(tmp_path),
                              "enqueue" if run == 0 else "-"],
                             cwd=ROOT, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        seen.append(json.loads(out.stdout))
    assert [s["claimed"] for s in seen] == [1, 1, 1, 0]
    assert [s["counts"]["requeued"] for s in seen] == [0, 1, 1, 0]
    assert seen[3]["counts"]["failed"] == 1
    with DatabaseManager(tmp_path, background_checkpoints=False) as db:
        [job] = db.all(TABLE)
    assert job["status"] == "failed" and job["attempts"] == 3
    assert job["error"].startswith(RESTART_ERROR + " 3 times")
