"""Grouping of pending work for ``QueueManager.batch_similar_requests`` (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable

from olol.queue.records import Entry


def fallback_batch_key(endpoint: str, model_key: str) -> str:
    """Group key for a record without ``batch_key``: generate and chat share a runner."""
    family = "infer" if endpoint in ("generate", "chat") else endpoint
    return f"{family}:{model_key}"


def group_similar(entries: Iterable[Entry]) -> list[dict]:
    """Group entries given in dispatch order by batch key (see the caller's docstring)."""
    groups: dict[str, dict] = {}
    members: dict[str, list[tuple[str, str | None]]] = {}
    for e in entries:
        bkey = e.batch_key or fallback_batch_key(e.endpoint, e.model_key)
        g = groups.get(bkey)
        if g is None:
            g = groups[bkey] = {"batch_key": bkey, "model_key": e.model_key,
                                "endpoint": e.endpoint, "priority": e.priority, "ids": [],
                                "coalesced": {}, "embed_merge": False}
            members[bkey] = []
        elif g["endpoint"] != e.endpoint:
            g["endpoint"] = "mixed"
        members[bkey].append((e.id, e.coalesce_key))
    for bkey, g in groups.items():
        by_key: dict[str, list[str]] = {}
        for rid, ckey in members[bkey]:
            if ckey is not None:
                by_key.setdefault(ckey, []).append(rid)
        seen: set[str] = set()
        for rid, ckey in members[bkey]:
            if ckey is None:
                g["ids"].append(rid)
            elif ckey not in seen:  # the first of identical requests brings the others
                seen.add(ckey)
                g["ids"].extend(by_key[ckey])
        g["coalesced"] = {k: v for k, v in by_key.items() if len(v) > 1}
        g["embed_merge"] = g["endpoint"] == "embed" and len(g["ids"]) > 1
    return list(groups.values())
