"""Identifiers: unique, 32 hex digits, and a forked child does not repeat its parent's."""

from __future__ import annotations

import os
import re

import pytest

from olol.ids import new_id


def test_ids_are_32_hex_digits_and_unique():
    ids = [new_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_ids_its_parent_does_not():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids, then leave at once
        try:
            os.write(w, "".join(new_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    child = {data[i:i + 32].decode() for i in range(0, len(data), 32)}
    parent = {new_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent
