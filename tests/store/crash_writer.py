"""A writer process for the crash tests: writes from 4 threads until killed.

Protocol on stdout, one line per event, flushed at once:
``I <key> <v>`` before a write of version v is issued, ``A <key> <v>`` after it
returned (acknowledged), ``X <key>`` before a delete, ``D <key>`` after it returned, ``READY`` once open.
"""

import random
import sys
import threading

from olol.store import DatabaseManager

_out_lock = threading.Lock()


def say(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_writers(work, name: str, n: int = 4) -> None:
    """Run ``work(i)`` on ``n`` named threads until the process is killed."""
    threads = [threading.Thread(target=work, args=(i,), name=f"{name}-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(data_dir: str, run: int) -> None:
    db = DatabaseManager(data_dir, checkpoint_bytes=32 << 10, checkpoint_interval_s=0.2)
    say("READY")

    def work(n: int) -> None:
        rnd = random.Random(run * 100 + n)
        mine: dict[str, tuple[int, int]] = {}
        i = 0
        while True:
            i += 1
            action = rnd.random()
            if action < 0.45 or not mine:
                key = f"r{run}-t{n}-{i}"
                say(f"I {key} 1")
                doc_id = db.insert("config", {"key": key, "value": {"v": 1, "pad": "x" * 300}})
                mine[key] = (doc_id, 1)
                say(f"A {key} 1")
            elif action < 0.9:
                key = rnd.choice(list(mine))
                doc_id, v = mine[key]
                say(f"I {key} {v + 1}")
                db.update("config", {"value": {"v": v + 1, "pad": "y" * 300}}, doc_id)
                mine[key] = (doc_id, v + 1)
                say(f"A {key} {v + 1}")
            else:
                key = rnd.choice(list(mine))
                doc_id, _ = mine.pop(key)
                say(f"X {key}")
                db.remove("config", doc_id)
                say(f"D {key}")

    run_writers(work, "crash-writer")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
