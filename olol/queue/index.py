"""RAM index of pending requests: dispatch order, globally and per model.

Sorted lists (``bisect``) rather than heaps: the scheduler peeks at the head
without claiming, and claims by id remove from the middle; both are a binary
search plus a memmove of pointers, which stays in microseconds at the queue's
bounded depth. Requests with a future ``not_before`` wait in a separate list
ordered by that time and move to the ready lists once it has passed.

Not thread-safe: :class:`~olol.queue.manager.QueueManager` holds its lock around
every call.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from olol.queue.records import Entry


class PendingIndex:
    """:param version: where :attr:`version` starts (a rebuilt index continues the
        count of the one it replaces, so a version never names two contents)."""

    def __init__(self, ageing_s: float, version: int = 0):
        self.ageing_s = ageing_s
        # bumped by every change to the ready lists (add, remove, promote): a reader
        # that saw version v and sees v again knows the dispatch order is unchanged
        self.version = version
        self._ready: list[tuple] = []
        self._by_model: dict[str, list[tuple]] = {}
        self._delayed: list[tuple] = []  # (not_before, seq, id)
        self._delayed_entries: dict[str, Entry] = {}
        self._entries: dict[str, Entry] = {}  # id -> entry, ready ones

    def __len__(self) -> int:
        return len(self._ready) + len(self._delayed)

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def delayed_count(self) -> int:
        return len(self._delayed)

    def next_due(self) -> float | None:
        """The earliest ``not_before`` still waiting, if any."""
        return self._delayed[0][0] if self._delayed else None

    def add(self, entry: Entry, now: float) -> int | None:
        """Index a pending entry; returns its 0-based ready position, None if delayed
        (or another proxy's, which this one never claims)."""
        self.remove(entry)
        if entry.foreign:
            return None
        if entry.not_before is not None and entry.not_before > now:
            entry.delayed_key = (entry.not_before, entry.seq, entry.id)
            insort(self._delayed, entry.delayed_key)
            self._delayed_entries[entry.id] = entry
            return None
        return self._add_ready(entry)

    def _add_ready(self, entry: Entry) -> int:
        key = entry.order_key(self.ageing_s)
        entry.ready_key = key
        self.version += 1
        pos = bisect_right(self._ready, key)
        self._ready.insert(pos, key)
        insort(self._by_model.setdefault(entry.model_key, []), key)
        self._entries[entry.id] = entry
        return pos

    def remove(self, entry: Entry) -> bool:
        """Drop an entry from whichever list holds it; False if it was not indexed."""
        found = False
        key = entry.ready_key
        if key is not None:
            entry.ready_key = None
            self.version += 1
            _discard(self._ready, key)
            lst = self._by_model.get(entry.model_key)
            if lst is not None:
                _discard(lst, key)
                if not lst:
                    del self._by_model[entry.model_key]
            self._entries.pop(entry.id, None)
            found = True
        key = entry.delayed_key
        if key is not None:
            entry.delayed_key = None
            _discard(self._delayed, key)
            self._delayed_entries.pop(entry.id, None)
            found = True
        return found

    def is_ready(self, entry: Entry) -> bool:
        return entry.ready_key is not None

    def promote(self, now: float) -> int:
        """Move delayed entries whose ``not_before`` has passed to the ready lists."""
        n = bisect_right(self._delayed, (now, float("inf")))
        if not n:
            return 0
        due, self._delayed[:n] = self._delayed[:n], []
        for _, _, request_id in due:
            entry = self._delayed_entries.pop(request_id)
            entry.delayed_key = None
            self._add_ready(entry)
        return n

    def head(self, limit: int, model_key: str | None = None) -> list[Entry]:
        """Up to ``limit`` ready entries in dispatch order (optionally one model's)."""
        lst = self._ready if model_key is None else self._by_model.get(model_key, [])
        return [self._entries[key[2]] for key in lst[:limit]]

    def ready_position(self, entry: Entry) -> int | None:
        """0-based place of a ready entry in the global dispatch order."""
        if entry.ready_key is None:
            return None
        return bisect_left(self._ready, entry.ready_key)

    def oldest_enqueued_ts(self) -> float | None:
        times = [e.enqueued_ts for e in self._entries.values()]
        times.extend(e.enqueued_ts for e in self._delayed_entries.values())
        return min(times) if times else None


def _discard(lst: list[tuple], key: tuple) -> None:
    i = bisect_left(lst, key)
    if i < len(lst) and lst[i] == key:
        del lst[i]
