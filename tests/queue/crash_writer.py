"""A queue writer process for the crash tests: enqueues, claims and completes until killed.

Run: ``python -m tests.queue.crash_writer DATA_DIR RUN``. Four threads each loop over:
enqueue a sync request, enqueue a job, or claim and complete one of their own pending
requests. Protocol on stdout, one line per event, flushed at once:
``I <kind> <id>`` before an enqueue, ``A <kind> <id>`` after it returned,
``F <id>`` before a completion, ``C <id>`` after it returned, ``READY`` once open.
"""

import random
import sys

from olol.queue import QueueManager
from olol.store import DatabaseManager
from tests.queue.conftest import make_request
from tests.store.crash_writer import run_writers, say


def main(data_dir: str, run: int) -> None:
    db = DatabaseManager(data_dir, checkpoint_bytes=64 << 10, checkpoint_interval_s=0.3)
    q = QueueManager(db, max_depth=1_000_000, max_depth_per_model=1_000_000,
                     max_finished_sync=1_000_000)  # this test checks nothing vanishes
    say("READY")

    def work(n: int) -> None:
        rnd = random.Random(run * 100 + n)
        mine: list[str] = []
        i = 0
        while True:
            i += 1
            action = rnd.random()
            if action < 0.7 or not mine:
                kind = "sync" if action < 0.35 else "job"
                rid = f"r{run}-t{n}-{i}"
                say(f"I {kind} {rid}")
                q.enqueue(make_request(kind=kind, prompt="p" * 200, id=rid))
                mine.append(rid)
                say(f"A {kind} {rid}")
            else:
                rid = mine.pop(rnd.randrange(len(mine)))
                if q.dequeue(ids=[rid], server="n1"):
                    say(f"F {rid}")
                    q.update_request_status(rid, "completed", {"response": rid})
                    say(f"C {rid}")

    run_writers(work, "queue-crash-writer")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
