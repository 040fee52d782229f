"""``olol.metrics`` by direct calls: what a finished request, a health poll and the live
state put in the registry, read back through prometheus_client's own text parser; the
model label's bound; the usage hook the dispatcher and the relay call; the Grafana
dashboard's expressions against the names the proxy exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from olol.cluster import ClusterManager
from olol.metrics import METRIC_NAMES, OTHER, ModelLabels, ProxyMetrics, request_usage
from olol.queue import QueueManager
from olol.store import DatabaseManager
from olol.store.journal import Timings
from tests.support import FakeClock

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "olol.json"


def scrape(metrics: ProxyMetrics) -> dict[str, dict]:
    """``{family name: {sample name + sorted labels: value}}`` via the real parser."""
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(families: dict, sample: str, **labels) -> float:
    family = next((f for f in families.values()
                   if any(k[0] == sample for k in f)), None)
    assert family is not None, f"no sample {sample}"
    want = tuple(sorted((k, str(v)) for k, v in labels.items()))
    return sum(v for (name, lbls), v in family.items()
               if name == sample and set(want) <= set(lbls))


def status(models=("llama3.2:1b",), loaded=(), parallel=2) -> dict:
    return {"ollama": {"reachable": True, "models": [{"name": m} for m in models],
                       "loaded": [{"name": m} for m in loaded]},
            "agent": {"parallel": parallel, "in_flight_total": 0}}


class _Client:
    def close(self) -> None:
        pass


@pytest.fixture
def parts():
    clock = FakeClock()
    db = DatabaseManager.memory(clock=clock)
    queue = QueueManager(db, clock=clock)
    cluster = ClusterManager(db, clock=clock, client_factory=lambda a: _Client())
    cluster.add_node("n1:1")
    cluster.record_poll("n1:1", status(models=("llama3.2:1b", "qwen2.5:0.5b")), 2.0)
    metrics = ProxyMetrics(queue=queue, cluster=cluster, db=db, clock=clock,
                           monotonic=clock, ready=lambda: True)
    queue.add_finish_listener(metrics.request_finished)
    yield clock, db, queue, cluster, metrics
    db.close()


def run_one(queue, clock, *, model="llama3.2:1b", wait=0.5, ttft=0.25, run=2.0, usage=None,
            endpoint="chat", api="ollama", status="completed"):
    rid, _ = queue.enqueue({"endpoint": endpoint, "api": api, "model": model,
                            "body": {"model": model}, "stream": True})
    clock.advance(wait)
    [claimed] = queue.dequeue(1, server="n1:1")
    assert claimed["id"] == rid
    enqueued = claimed["enqueued_ts"]
    clock.advance(run)
    if usage is None:
        usage = request_usage(
            {"prompt_eval_count": 10, "eval_count": 50, "eval_duration": 1_000_000_000,
             "load_duration": 3_000_000_000},
            first_token_ts=enqueued + ttft, cold=True)
    queue.update_request_status(rid, status, usage=usage)
    return rid


def test_a_finished_request_moves_the_request_metrics(parts):
    clock, _db, queue, _cluster, metrics = parts
    run_one(queue, clock)
    f = scrape(metrics)
    assert value(f, "olol_requests_total", route="/api/chat", model="llama3.2:1b",
                 status="completed", node="n1:1") == 1
    assert value(f, "olol_request_queue_seconds_count", model="llama3.2:1b") == 1
    assert value(f, "olol_request_queue_seconds_sum", model="llama3.2:1b") == pytest.approx(0.5)
    assert value(f, "olol_request_ttft_seconds_sum", model="llama3.2:1b") == pytest.approx(0.25)
    assert value(f, "olol_request_duration_seconds_sum", model="llama3.2:1b") == \
        pytest.approx(2.5)
    assert value(f, "olol_request_tokens_per_second_sum", model="llama3.2:1b") == \
        pytest.approx(50.0)
    assert value(f, "olol_tokens_total", model="llama3.2:1b", type="prompt") == 10
    assert value(f, "olol_tokens_total", model="llama3.2:1b", type="completion") == 50
    assert value(f, "olol_node_generated_tokens_total", node="n1:1") == 50
    assert value(f, "olol_node_generation_seconds_total", node="n1:1") == pytest.approx(1.0)
    assert value(f, "olol_model_load_seconds_sum", node="n1:1") == pytest.approx(3.0)
    assert value(f, "olol_model_load_seconds_bucket", node="n1:1", le="4.0") == 1
    assert value(f, "olol_model_load_seconds_bucket", node="n1:1", le="2.0") == 0
    # a bucket holds what is at most its bound: 0.5 s lands in le=0.5
    assert value(f, "olol_request_queue_seconds_bucket", model="llama3.2:1b", le="0.5") == 1


def test_warm_requests_count_no_load_and_failures_no_duration(parts):
    clock, _db, queue, _cluster, metrics = parts
    run_one(queue, clock, usage=request_usage({"eval_count": 5, "eval_duration": 10**8,
                                               "load_duration": 10**6}, cold=False))
    run_one(queue, clock, status="failed", usage={})
    f = scrape(metrics)
    assert value(f, "olol_model_load_seconds_count", node="n1:1") == 0
    assert value(f, "olol_request_duration_seconds_count", model="llama3.2:1b") == 1
    assert value(f, "olol_requests_total", status="failed") == 1
    assert value(f, "olol_request_ttft_seconds_count", model="llama3.2:1b") == 0


def test_retries_and_resumes(parts):
    clock, _db, queue, _cluster, metrics = parts
    rid, _ = queue.enqueue({"endpoint": "generate", "api": "openai", "model": "llama3.2:1b",
                            "body": {}, "stream": True})
    for _ in range(2):  # two failed attempts, back to the queue each time
        queue.dequeue(1, server="n1:1")
        queue.requeue(rid)
    queue.dequeue(1, server="n1:1")
    queue.update_request_status(rid, "completed", usage=request_usage(resumes=2))
    f = scrape(metrics)
    assert value(f, "olol_request_retries_total", model="llama3.2:1b") == 2
    assert value(f, "olol_request_resumes_total", model="llama3.2:1b") == 2
    assert value(f, "olol_requests_total", route="/v1/completions") == 1


def test_model_labels_are_bounded(parts):
    clock, _db, queue, _cluster, metrics = parts
    run_one(queue, clock, model="made-up-by-a-client:latest")
    run_one(queue, clock, model="qwen2.5:0.5b")
    f = scrape(metrics)
    assert value(f, "olol_requests_total", model=OTHER) == 1
    assert value(f, "olol_requests_total", model="qwen2.5:0.5b") == 1
    names = {dict(lbls).get("model") for (_, lbls) in f["olol_requests"]}
    assert "made-up-by-a-client:latest" not in names


def test_model_labels_cap_refresh_and_stickiness():
    known = {"a", "b", "c"}
    clock = FakeClock()
    labels = ModelLabels(lambda: set(known), max_models=2, refresh_s=10.0, clock=clock)
    assert labels("a") == "a" and labels("b") == "b"
    assert labels("c") == OTHER  # the cap
    assert labels(None) == OTHER and labels(42) == OTHER
    known.discard("a")
    clock.advance(11)
    labels.refresh()
    assert labels("a") == "a"  # once taken, kept
    calls = []
    lazy = ModelLabels(lambda: calls.append(1) or set(), refresh_s=10.0, clock=clock)
    for _ in range(100):
        assert lazy("unknown") == OTHER
    assert len(calls) == 1  # an unknown name does not refresh on every request


def test_live_state_queue_nodes_store(parts):
    clock, _db, queue, cluster, metrics = parts
    queue.enqueue({"endpoint": "chat", "model": "llama3.2:1b", "body": {}, "priority": 5})
    clock.advance(3)
    queue.enqueue({"endpoint": "chat", "model": "llama3.2:1b", "body": {}, "priority": 5})
    queue.enqueue({"endpoint": "chat", "model": "qwen2.5:0.5b", "body": {}})
    clock.advance(1)
    f = scrape(metrics)
    assert value(f, "olol_queue_depth", model="llama3.2:1b", priority=5, status="pending") == 2
    assert value(f, "olol_queue_depth", model="qwen2.5:0.5b", priority=0,
                 status="pending") == 1
    assert value(f, "olol_queue_oldest_wait_seconds", model="llama3.2:1b",
                 priority=5) == pytest.approx(4.0)
    queue.dequeue(1, model="qwen2.5:0.5b", server="n1:1")
    f = scrape(metrics)
    assert value(f, "olol_queue_depth", model="qwen2.5:0.5b", status="processing") == 1
    assert value(f, "olol_queue_requests", status="pending") == 2
    assert value(f, "olol_node_up", node="n1:1") == 1
    assert value(f, "olol_node_state", node="n1:1", state="healthy") == 1
    assert value(f, "olol_node_state", node="n1:1", state="unhealthy") == 0
    assert value(f, "olol_node_slots", node="n1:1") == 2
    assert value(f, "olol_node_models_available", node="n1:1") == 2
    assert value(f, "olol_ready") == 1
    cluster.record_poll_failure("n1:1", "UNAUTHENTICATED: missing or invalid bearer token")
    f = scrape(metrics)
    assert value(f, "olol_node_up", node="n1:1") == 0
    assert value(f, "olol_node_state", node="n1:1", state="unhealthy") == 1


def test_loads_and_evictions_from_polls(parts):
    _clock, _db, _queue, cluster, metrics = parts
    node = cluster.record_poll("n1:1", status(loaded=("llama3.2:1b",)), 1.0)
    metrics.node_polled(node)  # the baseline: nothing counted
    node = cluster.record_poll("n1:1", status(loaded=("qwen2.5:0.5b",)), 1.0)
    metrics.node_polled(node)
    node = cluster.record_poll("n1:1", status(loaded=("qwen2.5:0.5b", "llama3.2:1b")), 1.0)
    metrics.node_polled(node)
    f = scrape(metrics)
    assert value(f, "olol_model_loads_total", node="n1:1") == 2
    assert value(f, "olol_model_evictions_total", node="n1:1") == 1
    assert value(f, "olol_node_models_loaded", node="n1:1") == 2
    metrics.node_removed("n1:1")
    f = scrape(metrics)
    assert not any(dict(lbls).get("node") == "n1:1" for (_, lbls) in f["olol_model_loads"])


def test_ejections_are_counted(parts):
    _clock, _db, _queue, cluster, metrics = parts
    cluster.add_node("n2:1")
    cluster.record_poll("n2:1", status(), 1.0)
    cluster.outliers.success("n2:1", "llama3.2:1b")
    for _ in range(3):
        cluster.record_failure("n1:1", "llama3.2:1b")
    f = scrape(metrics)
    assert value(f, "olol_node_ejections_total", node="n1:1") == 1
    assert value(f, "olol_node_ejected_models", node="n1:1") == 1


def test_store_timings_of_a_durable_store(tmp_path):
    db = DatabaseManager(tmp_path / "data", background_checkpoints=False)
    try:
        metrics = ProxyMetrics(db=db)
        db.insert("config", {"key": "x", "value": 1})
        db.checkpoint()
        f = scrape(metrics)
        assert value(f, "olol_store_fsyncs_total") >= 1
        assert value(f, "olol_store_fsync_seconds_count") == value(f, "olol_store_fsyncs_total")
        assert value(f, "olol_store_checkpoint_seconds_count") == 1
        assert value(f, "olol_store_snapshot_bytes") > 0
        assert value(f, "olol_store_open") == 1
        assert value(f, "olol_store_rows", table="config") >= 1
    finally:
        db.close()


def test_timings_buckets_are_cumulative_and_bounded():
    t = Timings((0.1, 1.0))
    for s in (0.05, 0.1, 0.5, 5.0):
        t.observe(s)
    counts, total = t.snapshot()
    assert counts == [2, 1, 1] and total == pytest.approx(5.65)


def test_request_usage_reads_ollama_final_records():
    usage = request_usage({"prompt_eval_count": 3, "eval_count": 7, "eval_duration": 2 * 10**9,
                           "load_duration": 5 * 10**8, "prompt_eval_duration": 10**8,
                           "done": True}, first_token_ts=12.5, cold=True, resumes=1,
                          node="n9:1")
    assert usage == {"prompt_tokens": 3, "completion_tokens": 7, "eval_s": 2.0, "load_s": 0.5,
                     "prompt_eval_s": 0.1, "first_token_ts": 12.5, "cold": True,
                     "resumes": 1, "node": "n9:1"}
    assert request_usage(None) == {}
    assert request_usage({"eval_count": True, "eval_duration": "x"}) == {}


def test_a_failing_listener_part_never_fails_the_request(parts):
    clock, _db, queue, _cluster, metrics = parts
    rid, _ = queue.enqueue({"endpoint": "chat", "model": "llama3.2:1b", "body": {}})
    queue.dequeue(1, server="n1:1")
    # garbage usage: counted as far as it makes sense, never raised to the finisher
    assert queue.update_request_status(rid, "completed", usage={"first_token_ts": "soon"})


# ---------------------------------------------------------------------- dashboard
def exported_names(families: dict) -> set[str]:
    """Every series name a scrape can hold, from the parsed families."""
    names = set()
    for fam in text_string_to_metric_families(families):
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
        names.update(s.name for s in fam.samples)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(board)
    return exprs


def test_dashboard_uses_only_exported_names(tmp_path):
    clock = FakeClock()
    db = DatabaseManager(tmp_path / "data", clock=clock, background_checkpoints=False)
    try:
        queue = QueueManager(db, clock=clock)
        cluster = ClusterManager(db, clock=clock, client_factory=lambda a: _Client())

        class Health:
            sweeps = job_errors = 0

        class Registry:
            @staticmethod
            def active_pulls():
                return []

        metrics = ProxyMetrics(queue=queue, cluster=cluster, db=db, clock=clock,
                               ready=lambda: False, health=Health(), registry=Registry())
        text = generate_latest(metrics.registry).decode()
    finally:
        db.close()
    exported = exported_names(text)
    # the module's list of names is the truth about what is exported
    declared = {n[:-len("_total")] if n.endswith("_total") else n for n in METRIC_NAMES}
    assert declared == {f.name for f in text_string_to_metric_families(text)}
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        used |= set(re.findall(r"\bolol_[a-z0-9_]+", expr))
    unknown = sorted(used - exported)
    assert not unknown, f"the dashboard uses names the proxy does not export: {unknown}"
    # and it shows every family at least once
    families = {f.name for f in text_string_to_metric_families(text)}
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    shown = {n for n in families if any(n + suffix in used for suffix in suffixes)}
    assert families - shown == set()
