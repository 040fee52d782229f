"""Prometheus metrics of one proxy: ``ProxyMetrics``, served at ``GET /metrics``.

Everything lives in a :class:`~prometheus_client.CollectorRegistry` the proxy builds
once at start-up (never the library's global default registry, so that several
proxies in one process, as in the tests, never mix their figures).

Two kinds of figures:

* counted as things happen, at the smallest cost that can be had: a finished request
  (the queue's finish listener, :meth:`ProxyMetrics.request_finished`), an HTTP
  answer (:meth:`ProxyMetrics.http_request`), a health poll and a node's state change
  (:class:`olol.health.PollObserver`). Labelled children are cached, so a request
  costs a few dictionary lookups and lock-protected additions;
* read from live state when Prometheus scrapes (:class:`LiveCollector`): the queue's
  depth and oldest wait, the nodes' health, slots and ejections, the store's journal,
  fsync and checkpoint timings. Nothing is counted on the hot path for them.

Label values are bounded: ``model`` takes only the names of models the cluster's nodes
list (at most ``max_models`` of them, kept once seen); any other name a client sends
is counted as ``other``. ``route`` is a route pattern of the app (or ``unmatched``),
``node`` a member's address, ``status`` one of the queue's final states.

What the dispatcher knows about a request (the node's final record: token counts and
durations; when its first token reached the client; whether the model had to be
loaded; how many times the stream was resumed) reaches the metrics and the request
log through ``queue.update_request_status(..., usage=request_usage(...))``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from olol import __version__
from olol.health import NODE_STATES, node_state_of

if TYPE_CHECKING:
    from olol.health import HealthMonitor
    from olol.interfaces import ClusterView, Queue, Store
    from olol.registry import ModelRegistry
    from olol.scheduler import RequestScheduler

OTHER = "other"  # a model name outside the bounded set
NO_NODE = "none"  # a request that finished before any node took it

#: The HTTP route a queued request came in on, by (api, endpoint); jobs share one.
ROUTES = {
    ("ollama", "generate"): "/api/generate",
    ("ollama", "chat"): "/api/chat",
    ("ollama", "embed"): "/api/embed",
    ("ollama", "embeddings"): "/api/embeddings",
    ("openai", "generate"): "/v1/completions",
    ("openai", "chat"): "/v1/chat/completions",
    ("openai", "embed"): "/v1/embeddings",
    ("openai", "embeddings"): "/v1/embeddings",
    ("anthropic", "chat"): "/v1/messages",
    ("responses", "chat"): "/v1/responses",
}
JOBS_ROUTE = "/olol/v1/jobs"

QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
                120.0)
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
                    160.0, 320.0, 600.0)
TPS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0, 150.0, 200.0, 300.0,
               500.0, 1000.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)

#: Every metric name the proxy exports (a test checks the Grafana dashboard against it;
#: histograms add ``_bucket``, ``_sum`` and ``_count``, counters ``_total``).
METRIC_NAMES = frozenset({
    # requests
    "olol_requests_total", "olol_http_requests_total",
    "olol_request_queue_seconds", "olol_request_ttft_seconds",
    "olol_request_duration_seconds", "olol_request_tokens_per_second", "olol_tokens_total",
    "olol_request_retries_total", "olol_request_resumes_total",
    # queue
    "olol_queue_depth", "olol_queue_oldest_wait_seconds", "olol_queue_requests",
    "olol_queue_max_depth", "olol_queue_bytes",
    # nodes
    "olol_node_up", "olol_node_state", "olol_node_slots", "olol_node_slots_busy",
    "olol_node_models_loaded", "olol_node_models_available", "olol_node_poll_latency_seconds",
    "olol_node_consecutive_failures", "olol_node_ejected_models", "olol_node_ejections_total",
    "olol_node_readmissions_total", "olol_node_ejections_cancelled_total",
    "olol_node_mux_messages_total", "olol_node_mux_record_parts_total", "olol_node_mux_calls_open",
    "olol_node_state_changes_total", "olol_node_generated_tokens_total",
    "olol_node_generation_seconds_total", "olol_model_loads_total",
    "olol_model_evictions_total", "olol_model_load_seconds", "olol_model_pulls_active",
    # store
    "olol_store_open", "olol_store_journal_bytes", "olol_store_snapshot_bytes",
    "olol_store_journal_records_total", "olol_store_fsyncs_total", "olol_store_fsync_seconds",
    "olol_store_checkpoint_seconds", "olol_store_rows",
    # the proxy
    "olol_build_info", "olol_ready", "olol_health_sweeps_total", "olol_health_sweep_errors_total",
})


def request_usage(final: Any = None, *, first_token_ts: float | None = None,
                  cold: bool | None = None, resumes: int | None = None,
                  node: str | None = None) -> dict[str, Any]:
    """What a finisher passes as ``queue.update_request_status(..., usage=...)``:

    :param final: the node's final record (Ollama's ``prompt_eval_count``,
        ``eval_count``, ``eval_duration``, ``load_duration``... in nanoseconds).
    :param first_token_ts: when the first record reached the client, on the queue's
        clock (the time to first token is measured from the request's enqueue).
    :param cold: the model was not loaded on the node when the request was placed.
    :param resumes: how many times the stream was carried over to another node.
    :param node: the node that answered, when it is not the record's
        ``server_assigned``.
    """
    usage: dict[str, Any] = {}
    if isinstance(final, dict):
        for src, dst in (("prompt_eval_count", "prompt_tokens"),
                         ("eval_count", "completion_tokens")):
            value = final.get(src)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                usage[dst] = value
        for src, dst in (("eval_duration", "eval_s"), ("load_duration", "load_s"),
                         ("prompt_eval_duration", "prompt_eval_s")):
            value = final.get(src)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                usage[dst] = value / 1e9
    if first_token_ts is not None:
        usage["first_token_ts"] = float(first_token_ts)
    if cold is not None:
        usage["cold"] = bool(cold)
    if resumes:
        usage["resumes"] = int(resumes)
    if node:
        usage["node"] = node
    return usage


def route_of(record: dict) -> str:
    """The route label of a queued request."""
    if record.get("kind") == "job":
        return JOBS_ROUTE
    return ROUTES.get((str(record.get("api")), str(record.get("endpoint"))), "other")


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class ModelLabels:
    """Bounds the ``model`` label: a name is its own label when the cluster knows the
    model (and fewer than ``max_models`` names have been taken), else ``other``.

    Names once taken stay (a series does not jump to ``other`` when a model is removed).
    An unknown name refreshes the known set from ``known()`` at most once per
    ``refresh_s`` seconds; reads take no lock.
    """

    def __init__(self, known: Callable[[], Iterable[str]], *, max_models: int = 100,
                 refresh_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._known_fn = known
        self.max_models = max(0, int(max_models))
        self.refresh_s = float(refresh_s)
        self.clock = clock
        self._labels: frozenset[str] = frozenset()
        self._refreshed: float | None = None
        self._lock = threading.Lock()

    def __call__(self, model: Any) -> str:
        if model in self._labels:
            return model
        if not isinstance(model, str) or not model:
            return OTHER
        now = self.clock()
        if self._refreshed is None or now - self._refreshed >= self.refresh_s:
            self.refresh(now)
            if model in self._labels:
                return model
        return OTHER

    def refresh(self, now: float | None = None) -> None:
        """Take the names the cluster knows now (up to the cap)."""
        with self._lock:
            self._refreshed = self.clock() if now is None else now
            try:
                fresh = set(self._known_fn())
            except Exception:  # noqa: BLE001 - a label must never fail a request
                return
            room = self.max_models - len(self._labels)
            if room <= 0:
                return
            new = sorted(fresh - self._labels)[:room]
            if new:
                self._labels = self._labels | frozenset(new)

    @property
    def labels(self) -> frozenset[str]:
        return self._labels


def cluster_models(cluster: Any) -> Callable[[], set[str]]:
    """The model keys any member lists or has loaded (the registry's view)."""

    def known() -> set[str]:
        names: set[str] = set()
        for node in cluster.list_nodes():
            names.update(node.available_models)
            names.update(k for k, v in node.loaded_models.items() if not v.get("_noted"))
        return names

    return known


class _ModelSeries:
    """The histogram children of one model label (looked up once)."""

    __slots__ = ("duration", "queue", "retries", "resumes", "tokens_in", "tokens_out", "tps",
                 "ttft")

    def __init__(self, m: ProxyMetrics, model: str) -> None:
        self.queue = m.queue_seconds.labels(model)
        self.ttft = m.ttft_seconds.labels(model)
        self.duration = m.duration_seconds.labels(model)
        self.tps = m.tokens_per_second.labels(model)
        self.tokens_in = m.tokens.labels(model, "prompt")
        self.tokens_out = m.tokens.labels(model, "completion")
        self.retries = m.retries.labels(model)
        self.resumes = m.resumes.labels(model)


class ProxyMetrics:
    """The proxy's Prometheus registry and the hooks that feed it.

    :param queue: the :class:`~olol.queue.QueueManager` (depth, waits; its finish
        listener is :meth:`request_finished`).
    :param cluster: the :class:`~olol.cluster.ClusterManager` (nodes, outliers).
    :param db: the store (journal, fsync and checkpoint timings, rows).
    :param scheduler: the scheduler (slots it holds per node); optional.
    :param registry: the model registry (pulls in progress); optional.
    :param health: the :class:`~olol.health.HealthMonitor` (sweeps); optional, may be
        set later.
    :param ready: says whether the proxy can serve inference (``olol_ready``).
    :param clock: the queue's clock (seconds); ``monotonic`` for the label refresh.
    :param max_models: most distinct ``model`` label values.
    """

    def __init__(self, *, queue: Queue | None = None, cluster: ClusterView | None = None,
                 db: Store | None = None, scheduler: RequestScheduler | None = None,
                 registry: ModelRegistry | None = None, health: HealthMonitor | None = None,
                 ready: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 max_models: int = 100) -> None:
        self.queue, self.cluster, self.db = queue, cluster, db
        self.scheduler, self.model_registry, self.health = scheduler, registry, health
        self.ready = ready
        self.clock = clock
        # ``*_created`` samples would double every counter's series for nothing a
        # dashboard uses (a library-wide switch: olol has no other Prometheus user).
        disable_created_metrics()
        self.registry = CollectorRegistry()
        known = cluster_models(cluster) if cluster is not None else (lambda: ())
        self.models = ModelLabels(known, max_models=max_models, clock=monotonic)
        r = self.registry
        self.requests = Counter(
            "olol_requests", "Inference requests finished, by route, model, final status "
            "(completed, failed, cancelled, interrupted) and node.",
            ("route", "model", "status", "node"), registry=r)
        self.http = Counter(
            "olol_http_requests", "HTTP answers by route pattern, method and status code.",
            ("route", "method", "code"), registry=r)
        self.queue_seconds = Histogram(
            "olol_request_queue_seconds", "Time from enqueue to the (last) dispatch.",
            ("model",), buckets=QUEUE_BUCKETS, registry=r)
        self.ttft_seconds = Histogram(
            "olol_request_ttft_seconds", "Time from enqueue to the first record sent to "
            "the client (streamed requests).", ("model",), buckets=TTFT_BUCKETS, registry=r)
        self.duration_seconds = Histogram(
            "olol_request_duration_seconds", "Time from enqueue to completion (completed "
            "requests).", ("model",), buckets=DURATION_BUCKETS, registry=r)
        self.tokens_per_second = Histogram(
            "olol_request_tokens_per_second", "Generation speed of a request on its node "
            "(eval_count / eval_duration).", ("model",), buckets=TPS_BUCKETS, registry=r)
        self.tokens = Counter(
            "olol_tokens", "Tokens processed, by model and type (prompt, completion).",
            ("model", "type"), registry=r)
        self.retries = Counter(
            "olol_request_retries", "Extra dispatches of finished requests (a node failed "
            "or was busy before answering), counted when the request finishes.",
            ("model",), registry=r)
        self.resumes = Counter(
            "olol_request_resumes", "Streams carried over to another node after their node "
            "failed mid-answer.", ("model",), registry=r)
        self.node_tokens = Counter(
            "olol_node_generated_tokens", "Completion tokens generated, by node.",
            ("node",), registry=r)
        self.node_generation = Counter(
            "olol_node_generation_seconds", "Seconds nodes spent generating "
            "(eval_duration), by node: rate(tokens) / rate(seconds) is the node's speed.",
            ("node",), registry=r)
        self.loads = Counter(
            "olol_model_loads", "Models that appeared in a node's loaded list between two "
            "health polls.", ("node",), registry=r)
        self.evictions = Counter(
            "olol_model_evictions", "Models that left a node's loaded list between two "
            "health polls.", ("node",), registry=r)
        self.load_seconds = Histogram(
            "olol_model_load_seconds", "Model load time (Ollama's load_duration) of "
            "requests placed where their model was cold, by node.", ("node",),
            buckets=LOAD_BUCKETS, registry=r)
        self.state_changes = Counter(
            "olol_node_state_changes", "Node state changes, by node and new state.",
            ("node", "state"), registry=r)
        self.live = LiveCollector(self)
        r.register(self.live)
        self._series: dict[str, _ModelSeries] = {}
        self._req_children: dict[tuple, Any] = {}
        self._http_children: dict[tuple, Any] = {}
        self._node_children: dict[str, tuple] = {}
        self._loaded: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------------ hot path
    def _model_series(self, model: str) -> _ModelSeries:
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = _ModelSeries(self, model)
        return series

    def request_finished(self, record: dict) -> None:
        """The queue's finish listener: one request reached a final state."""
        model = self.models(record.get("model_key") or record.get("model"))
        usage = record.get("usage") or {}
        node = usage.get("node") or record.get("server_assigned") or NO_NODE
        status = record.get("status") or "unknown"
        key = (record.get("kind"), record.get("api"), record.get("endpoint"), model, status,
               node)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(
                route_of(record), model, status, node)
        child.inc()
        s = self._model_series(model)
        enq = _num(record.get("enqueued_ts"))
        started = _num(record.get("started_ts"))
        if enq is not None and started is not None:
            s.queue.observe(max(0.0, started - enq))
        done = _num(record.get("completed_ts"))
        if status == "completed" and enq is not None and done is not None:
            s.duration.observe(max(0.0, done - enq))
        attempts = record.get("attempts")
        if isinstance(attempts, int) and attempts > 1:
            s.retries.inc(attempts - 1)
        if not usage:
            return
        first = _num(usage.get("first_token_ts"))
        if first is not None and enq is not None:
            s.ttft.observe(max(0.0, first - enq))
        prompt = usage.get("prompt_tokens")
        if prompt:
            s.tokens_in.inc(prompt)
        out = usage.get("completion_tokens")
        if out:
            s.tokens_out.inc(out)
        eval_s = usage.get("eval_s")
        if node != NO_NODE:
            per_node = self._node_children.get(node)
            if per_node is None:
                per_node = self._node_children[node] = (
                    self.node_tokens.labels(node), self.node_generation.labels(node),
                    self.load_seconds.labels(node))
            if out and eval_s:
                per_node[0].inc(out)
                per_node[1].inc(eval_s)
            load_s = usage.get("load_s")
            if load_s is not None and usage.get("cold"):
                per_node[2].observe(load_s)
        if out and eval_s:
            s.tps.observe(out / eval_s)
        if usage.get("resumes"):
            s.resumes.inc(usage["resumes"])

    def http_request(self, route: str, method: str, code: int) -> None:
        """One HTTP answer (``route`` is the app's route pattern, or ``unmatched``)."""
        key = (route, method, code)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http.labels(route, method, str(code))
        child.inc()

    # ------------------------------------------------------------------ health
    def node_polled(self, node: Any) -> None:
        """A health poll ended: count the models that were loaded and evicted since
        the node's previous poll (the first poll of a node only sets the baseline)."""
        loaded = frozenset(k for k, v in node.loaded_models.items() if not v.get("_noted"))
        before = self._loaded.get(node.address)
        self._loaded[node.address] = loaded
        if before is None or before == loaded:
            return
        if added := len(loaded - before):
            self.loads.labels(node.address).inc(added)
        if gone := len(before - loaded):
            self.evictions.labels(node.address).inc(gone)

    def node_state_changed(self, address: str, old: str | None, new: str,
                           reason: str | None) -> None:
        self.state_changes.labels(address, new).inc()

    def node_removed(self, address: str) -> None:
        """Drop the node's own series (their number stays bounded by the members)."""
        self._loaded.pop(address, None)
        self._node_children.pop(address, None)
        for metric in (self.loads, self.evictions, self.load_seconds, self.node_tokens,
                       self.node_generation):
            try:
                metric.remove(address)
            except KeyError:
                pass
        for state in NODE_STATES:
            try:
                self.state_changes.remove(address, state)
            except KeyError:
                pass

    # ------------------------------------------------------------------ output
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """``(body, content type)`` in Prometheus text format (OpenMetrics when the
        ``Accept`` header asks for it)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _histogram(name: str, doc: str, timings: Any) -> HistogramMetricFamily:
    counts, total = timings.snapshot()
    buckets, running = [], 0
    for bound, n in zip(timings.bounds, counts, strict=False):
        running += n
        buckets.append((repr(float(bound)), running))
    running += counts[-1]
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def _reserved_slots(scheduler: Any) -> dict[str, int] | None:
    """Slots the scheduler holds per node now (None: it does not say)."""
    if scheduler is None:
        return None
    fn = getattr(scheduler, "slots_in_use", None)
    return dict(fn()) if callable(fn) else None


class LiveCollector:
    """Figures read from live state at scrape time (see the module docstring)."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        info = GaugeMetricFamily("olol_build_info", "The proxy's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if m.queue is not None:
            yield from self._queue(m.queue)
        nodes = []
        if m.cluster is not None:
            nodes = m.cluster.list_nodes()
            yield from self._nodes(m.cluster, nodes)
        if m.ready is not None:
            try:
                ready = bool(m.ready())
            except Exception:  # noqa: BLE001 - a failing probe means not ready
                ready = False
            yield GaugeMetricFamily("olol_ready", "1 when the proxy can serve inference "
                                    "(the readiness probe's answer).", value=int(ready))
        if m.db is not None:
            yield from self._store(m.db)
        if m.health is not None:
            yield CounterMetricFamily("olol_health_sweeps", "Health sweeps run.",
                                      value=m.health.sweeps)
            yield CounterMetricFamily("olol_health_sweep_errors", "Health sweeps that failed.",
                                      value=m.health.job_errors)
        if m.model_registry is not None:
            try:
                pulls = len(m.model_registry.active_pulls())
            except Exception:  # noqa: BLE001
                pulls = 0
            yield GaugeMetricFamily("olol_model_pulls_active", "Model pulls in progress.",
                                    value=pulls)

    def _queue(self, queue: Queue) -> Iterator[Metric]:
        m = self.m
        now = m.clock()
        depth = GaugeMetricFamily("olol_queue_depth", "Requests waiting (pending) or "
                                  "running (processing), by model and priority.",
                                  labels=["model", "priority", "status"])
        oldest = GaugeMetricFamily("olol_queue_oldest_wait_seconds", "Age of the oldest "
                                   "pending request, by model and priority.",
                                   labels=["model", "priority"])
        counts: dict[tuple[str, str, str], int] = {}
        ages: dict[tuple[str, str], float] = {}
        for model_key, priority, status, n, first_ts in queue.active_summary():
            model = m.models(model_key)
            key = (model, str(priority), status)
            counts[key] = counts.get(key, 0) + n
            if first_ts is not None:
                age = max(0.0, now - first_ts)
                k2 = (model, str(priority))
                ages[k2] = max(ages.get(k2, 0.0), age)
        for key, n in sorted(counts.items()):
            depth.add_metric(list(key), n)
        for key2, age in sorted(ages.items()):
            oldest.add_metric(list(key2), age)
        yield depth
        yield oldest
        stats = queue.get_queue_stats()
        by_status = GaugeMetricFamily("olol_queue_requests", "Records in the queue by "
                                      "status (finished ones until they are cleaned up).",
                                      labels=["status"])
        for status, n in sorted((stats.get("by_status") or {}).items()):
            by_status.add_metric([status], n)
        yield by_status
        yield GaugeMetricFamily("olol_queue_max_depth", "Bound on pending + running "
                                "requests (past it: 503).", value=stats.get("max_depth", 0))
        active_bytes = getattr(m.queue, "active_bytes", None)
        if callable(active_bytes):
            yield GaugeMetricFamily("olol_queue_bytes", "Body bytes held for pending and "
                                    "running requests.", value=active_bytes())

    def _nodes(self, cluster: ClusterView, nodes: list[Any]) -> Iterator[Metric]:
        m = self.m
        now = cluster.clock()
        up = GaugeMetricFamily("olol_node_up", "1 when the node takes work (healthy, "
                               "circuit closed, not suspect).", labels=["node"])
        state = GaugeMetricFamily("olol_node_state", "1 for the node's current state "
                                  "(healthy, suspect, unhealthy, unknown).",
                                  labels=["node", "state"])
        slots = GaugeMetricFamily("olol_node_slots", "Requests the node runs at once.",
                                  labels=["node"])
        busy = GaugeMetricFamily("olol_node_slots_busy", "Slots in use now (held by this "
                                 "proxy; the agent's own count where unknown).",
                                 labels=["node"])
        loaded = GaugeMetricFamily("olol_node_models_loaded", "Models loaded on the node "
                                   "(last poll).", labels=["node"])
        available = GaugeMetricFamily("olol_node_models_available", "Models on the node's "
                                      "disk (last poll).", labels=["node"])
        latency = GaugeMetricFamily("olol_node_poll_latency_seconds", "Duration of the "
                                    "last good health poll.", labels=["node"])
        failures = GaugeMetricFamily("olol_node_consecutive_failures", "Failed polls in a "
                                     "row.", labels=["node"])
        ejected = GaugeMetricFamily("olol_node_ejected_models", "Models the node is ejected "
                                    "for now (outlier detection).", labels=["node"])
        reserved = _reserved_slots(m.scheduler)
        for n in nodes:
            a = n.address
            current, _ = node_state_of(n, now)
            up.add_metric([a], int(n.usable(now)))
            for s in NODE_STATES:
                state.add_metric([a, s], int(s == current))
            slots.add_metric([a], n.parallel)
            busy.add_metric([a], reserved.get(a, 0) if reserved is not None else n.in_flight)
            loaded.add_metric([a], sum(1 for v in n.loaded_models.values()
                                       if not v.get("_noted")))
            available.add_metric([a], len(n.available_models))
            if n.latency_ms is not None:
                latency.add_metric([a], n.latency_ms / 1000.0)
            failures.add_metric([a], n.consecutive_failures)
            ejected.add_metric([a], len(n.ejected))
        yield from (up, state, slots, busy, loaded, available, latency, failures, ejected)
        mux_stats = getattr(m.cluster, "mux_stats", None)
        if callable(mux_stats):
            members = {n.address for n in nodes}
            messages = CounterMetricFamily(
                "olol_node_mux_messages", "Messages received on the node's multiplexed "
                "call (generate and chat calls that overlap).", labels=["node"])
            parts = CounterMetricFamily(
                "olol_node_mux_record_parts", "Calls' records in those messages (one per "
                "call and message): divided by the messages, how many calls' records the "
                "node sent together.", labels=["node"])
            calls = GaugeMetricFamily("olol_node_mux_calls_open", "Calls open on the node's "
                                      "multiplexed call.", labels=["node"])
            for address, (n_messages, n_parts, n_open) in sorted(mux_stats().items()):
                if address in members:
                    messages.add_metric([address], n_messages)
                    parts.add_metric([address], n_parts)
                    calls.add_metric([address], n_open)
            yield from (messages, parts, calls)
        outliers = getattr(m.cluster, "outliers", None)
        if outliers is not None:
            families = {
                "ejected": CounterMetricFamily(
                    "olol_node_ejections", "Ejections of a node for a model (outlier "
                    "detection).", labels=["node"]),
                "readmitted": CounterMetricFamily(
                    "olol_node_readmissions", "Re-admissions after an ejection.",
                    labels=["node"]),
                "ejection-cancelled": CounterMetricFamily(
                    "olol_node_ejections_cancelled", "Ejections cancelled: the failure was "
                    "the request's own.", labels=["node"]),
            }
            counts = outliers.event_counts()
            members = {n.address for n in nodes}
            for (event, node), value in sorted(counts.items()):
                if event in families and node in members:
                    families[event].add_metric([node], value)
            yield from families.values()

    def _store(self, db: Store) -> Iterator[Metric]:
        yield GaugeMetricFamily("olol_store_open", "1 while the store accepts writes.",
                                value=int(not getattr(db, "closed", False)))
        stats = db.stats()
        rows = GaugeMetricFamily("olol_store_rows", "Rows per table.", labels=["table"])
        for table, n in sorted((stats.get("rows") or {}).items()):
            rows.add_metric([table], n)
        yield rows
        if "journal_bytes" not in stats:
            return  # an in-memory store: no journal
        yield GaugeMetricFamily("olol_store_journal_bytes", "Size of the current journal "
                                "(reset by each checkpoint).", value=stats["journal_bytes"])
        yield GaugeMetricFamily("olol_store_snapshot_bytes", "Size of the last checkpoint "
                                "(db.json).", value=stats.get("snapshot_bytes", 0))
        yield CounterMetricFamily("olol_store_journal_records", "Journal records written.",
                                  value=stats.get("journal_records", 0))
        yield CounterMetricFamily("olol_store_fsyncs", "Group commits (one fsync each).",
                                  value=stats.get("journal_syncs", 0))
        sync = getattr(db, "sync_timings", None)
        if sync is not None:
            yield _histogram("olol_store_fsync_seconds", "Write + fsync of one group commit.",
                             sync)
        ckpt = getattr(db, "checkpoint_timings", None)
        if ckpt is not None:
            yield _histogram("olol_store_checkpoint_seconds", "Duration of one checkpoint "
                             "(snapshot written, old journals dropped).", ckpt)
