"""What the dashboard shows, as plain JSON-able dicts: one builder per view.

Each builder reads the live objects of a :class:`~olol.context.ProxyContext` (the
cluster's node snapshots, the queue's counters, the model registry, the maintenance
jobs, the traffic recorder) and never writes. :func:`build_state` gathers the views
``/olol/ui/api/state`` answers with; the templates render the same dicts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from olol.context import Services
from olol.health import node_state_of
from olol.metrics import _reserved_slots

VIEWS = ("nodes", "queue", "models", "traffic", "maintenance")
#: Latest requests shown on the traffic view.
LATEST_SHOWN = 25
#: Plan actions (and skipped models) listed; the apply button applies the whole plan.
PLAN_SHOWN = 50


def _gpu(raw: dict) -> dict[str, Any]:
    return {
        "name": raw.get("name") or f"GPU {raw.get('index', 0)}",
        "memory_used": raw.get("memory_used_bytes"),
        "memory_total": raw.get("memory_total_bytes"),
        "utilization": raw.get("gpu_utilization_percent"),
        "temperature_c": raw.get("temperature_c"),
    }


def node_row(node: Any, now: float, reserved: dict[str, int] | None) -> dict[str, Any]:
    """One node as the nodes view shows it."""
    state, reason = node_state_of(node, now)
    hw = node.hardware if isinstance(node.hardware, dict) else {}
    cpu = hw.get("cpu") or {}
    memory = hw.get("memory") or {}
    gpu = hw.get("gpu") or {}
    total = memory.get("total_bytes")
    avail = memory.get("available_bytes")
    busy = reserved.get(node.address, 0) if reserved is not None else node.in_flight
    return {
        "address": node.address,
        "state": state,
        "healthy": bool(node.healthy),
        "reason": reason,
        "cpu_percent": round(float(cpu["total_percent"]), 1)
        if cpu.get("total_percent") is not None else None,
        "ram_used": (total - avail) if total is not None and avail is not None else None,
        "ram_total": total,
        "gpus": [_gpu(g) for g in gpu.get("gpus") or [] if isinstance(g, dict)],
        "gpu_note": gpu.get("unavailable_reason") or None,
        "slots_busy": int(busy),
        "slots_total": int(node.parallel),
        "models": len(node.available_models),
        "loaded": sorted(k for k, v in node.loaded_models.items() if not v.get("_noted")),
        "latency_ms": round(node.latency_ms, 1) if node.latency_ms is not None else None,
    }


def nodes_view(ctx: Services) -> dict[str, Any]:
    now = ctx.cluster.clock()
    reserved = _reserved_slots(ctx.scheduler)
    rows = [node_row(n, now, reserved) for n in ctx.cluster.list_nodes()]
    rows.sort(key=lambda r: (r["state"] == "healthy", r["address"]))
    return {
        "nodes": rows,
        "total": len(rows),
        "healthy": sum(1 for r in rows if r["state"] == "healthy"),
        "slots_busy": sum(r["slots_busy"] for r in rows),
        "slots_total": sum(r["slots_total"] for r in rows),
    }


def queue_view(ctx: Services) -> dict[str, Any]:
    now = ctx.clock()
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for model, priority, status, n, first_ts in ctx.queue.active_summary():
        g = groups.setdefault((model, priority), {"model": model, "priority": priority,
                                                  "pending": 0, "processing": 0,
                                                  "oldest_wait_s": None})
        g[status] = g.get(status, 0) + n
        if first_ts is not None:
            age = round(max(0.0, now - first_ts), 1)
            g["oldest_wait_s"] = max(g["oldest_wait_s"] or 0.0, age)
    rows = sorted(groups.values(), key=lambda g: (-g["priority"], g["model"]))
    waits = [g["oldest_wait_s"] for g in rows if g["oldest_wait_s"] is not None]
    out: dict[str, Any] = {
        "depth": sum(g["pending"] + g["processing"] for g in rows),
        "pending": sum(g["pending"] for g in rows),
        "processing": sum(g["processing"] for g in rows),
        "oldest_wait_s": max(waits) if waits else None,
        "groups": rows,
        "max_depth": ctx.queue.max_depth,
    }
    traffic = ctx.traffic
    series = traffic.series() if traffic is not None else []
    # newest first: the current (partial) minute, then the 15 before it
    out["per_minute"] = [{"minute_ts": p["minute_ts"], "admitted": p["admitted"],
                          "rejected": p["rejected"]} for p in reversed(series[-16:])]
    # the last 60 seconds, as the two newest buckets weighted by their overlap with them
    now_minute = series[-1] if series else {"admitted": 0, "rejected": 0, "minute_ts": now}
    before = series[-2] if len(series) >= 2 else {"admitted": 0, "rejected": 0}
    share = 1.0 - min(60.0, max(0.0, now - now_minute["minute_ts"])) / 60.0
    for field in ("admitted", "rejected"):
        out[f"{field}_per_minute"] = round(now_minute[field] + before[field] * share)
    return out


def plan_id(plan: dict) -> str:
    """A short digest of a plan's actions: what the apply button confirms."""
    raw = orjson.dumps(plan.get("actions") or [], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:16]


def models_view(ctx: Services) -> dict[str, Any]:
    registry = ctx.registry
    nodes = sorted(n.address for n in ctx.cluster.list_nodes())
    if registry is None:
        return {"nodes": nodes, "models": [], "pulls": [], "plan": None, "plan_id": None}
    pulls = registry.active_pulls()
    progress: dict[tuple[str, str], int | None] = {}
    for op in pulls:
        for node, p in (op.get("progress") or {}).items():
            total, done = p.get("total") or 0, p.get("completed") or 0
            progress[(op["model"], node)] = int(done * 100 / total) if total else None
    models = []
    for m in registry.get_model_status():
        cells: dict[str, Any] = {}
        for a in m["stale"]:
            cells[a] = "stale"
        for a in m["nodes"]:
            cells[a] = "present"
        for a in m["loaded"]:
            cells[a] = "loaded"
        for a in m["pulling"]:
            pct = progress.get((m["name"], a))
            cells[a] = "pulling" if pct is None else f"pulling:{pct}"
        models.append({"name": m["name"], "size": m["size"], "pinned": m["pinned"],
                       "copies": len(m["nodes"]), "usage_count": m["usage_count"],
                       "cells": cells})
    plan = registry.optimize_model_distribution()
    actions, skipped = plan.get("actions") or [], plan.get("skipped") or []
    return {
        "nodes": nodes,
        "models": models,
        "pulls": [{"id": op["id"], "model": op["model"], "nodes": op["nodes"],
                   "progress": {n: progress.get((op["model"], n)) for n in op["nodes"]}}
                  for op in pulls],
        "plan": {"actions": actions[:PLAN_SHOWN], "total": len(actions),
                 "adds": sum(1 for a in actions if a.get("action") == "add"),
                 "removes": sum(1 for a in actions if a.get("action") == "remove"),
                 "skipped": skipped[:PLAN_SHOWN], "skipped_total": len(skipped)},
        "plan_id": plan_id(plan),
    }


def traffic_view(ctx: Services) -> dict[str, Any]:
    traffic = ctx.traffic
    if traffic is None:
        return {"series": [], "latest": []}
    series = traffic.series()
    return {"series": series, "latest": traffic.latest(LATEST_SHOWN)}


def maintenance_view(ctx: Services) -> dict[str, Any]:
    jobs = ctx.maintenance
    rows = []
    for job in jobs.status() if jobs is not None else []:
        rows.append({k: job.get(k) for k in (
            "id", "interval_s", "runs", "failures", "running", "last_run", "duration_s",
            "outcome", "error", "next_run")})
    return {"jobs": rows}


BUILDERS = {"nodes": nodes_view, "queue": queue_view, "models": models_view,
            "traffic": traffic_view, "maintenance": maintenance_view}


def build_state(ctx: Services, views: tuple[str, ...] | list[str] = VIEWS) -> dict[str, Any]:
    """The named views (all by default) and the time they were built."""
    out: dict[str, Any] = {"time": ctx.clock()}
    for name in views:
        out[name] = BUILDERS[name](ctx)
    return out
