"""Identifiers for requests, jobs and node-call batches.

:func:`new_id` returns 32 lowercase hex digits, unique within the process and
unguessable from the others: a keyed BLAKE2b of a counter, the key drawn once from
the kernel's random source (again in a forked child). ``uuid.uuid4()`` reads that
source on every call, and the read releases the GIL: on a busy proxy each id cost
a thread switch, several per request.
"""

from __future__ import annotations

import hashlib
import itertools
import os

__all__ = ["new_id"]


class _Source:
    def __init__(self) -> None:
        self.rekey()

    def rekey(self) -> None:
        self.key = os.urandom(32)
        self.counter = itertools.count()

    def new(self) -> str:
        n = next(self.counter)  # atomic under the GIL
        return hashlib.blake2b(n.to_bytes(16, "big"), key=self.key, digest_size=16).hexdigest()


_SOURCE = _Source()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SOURCE.rekey)


def new_id() -> str:
    """A new identifier: 32 hex digits (128 bits)."""
    return _SOURCE.new()
