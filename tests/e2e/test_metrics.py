"""``GET /metrics`` on a live proxy (simulators, agents, waitress), read with
prometheus_client's own text parser: the values move as traffic flows. Each check
looks at the series the test's own traffic touches (health polls, registry syncs and
the scrapes themselves are traffic too, so totals are never compared)."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from olol.keys import KeyStore
from tests.support import wait_until

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def scrape(url: str, headers: dict | None = None) -> dict[tuple, float]:
    r = requests.get(url + "/metrics", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= set(lbls))


def test_metrics_move_with_traffic(make_cluster):
    c = make_cluster(nodes=2)
    before = scrape(c.url)
    assert total(before, "olol_node_up") == 2
    assert total(before, "olol_ready") == 1
    assert total(before, "olol_requests_total", route="/api/chat") == 0
    for stream in (False, True, False):
        r = requests.post(c.url + "/api/chat", json={**CHAT, "stream": stream}, timeout=30)
        assert r.status_code == 200
    r = requests.post(c.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200
    r = requests.post(c.url + "/api/chat", json={**CHAT, "model": "no-such-model"}, timeout=30)
    assert r.status_code == 404
    # the finish listener may run just after the answer (bookkeeping deferred past the
    # response): wait for it rather than for a moment
    assert wait_until(lambda: total(scrape(c.url), "olol_requests_total",
                                    route="/api/chat") == 3)
    after = scrape(c.url)
    assert total(after, "olol_requests_total", route="/api/chat", model="llama3.2:1b",
                 status="completed") == 3
    assert total(after, "olol_requests_total", route="/v1/chat/completions") == 1
    nodes = {dict(lbls)["node"] for (n, lbls), v in after.items()
             if n == "olol_requests_total" and v}
    assert nodes <= {a.address for a in c.agents}
    assert total(after, "olol_request_queue_seconds_count", model="llama3.2:1b") == 4
    assert total(after, "olol_request_duration_seconds_count", model="llama3.2:1b") == 4
    assert total(after, "olol_request_duration_seconds_bucket", model="llama3.2:1b",
                 le="+Inf") == 4
    # HTTP answers by route pattern and code, the 404 for an unknown model included
    assert total(after, "olol_http_requests_total", route="/api/chat", method="POST",
                 code=200) - total(before, "olol_http_requests_total", route="/api/chat",
                                   code=200) == 3
    assert total(after, "olol_http_requests_total", route="/api/chat", code=404) == 1
    # the unknown model never got a label of its own
    models = {dict(lbls).get("model") for (n, lbls) in after if "model" in dict(lbls)}
    assert "no-such-model" not in models
    # the store wrote and synced its journal
    assert total(after, "olol_store_fsyncs_total") >= 1
    assert total(after, "olol_store_fsync_seconds_count") == \
        total(after, "olol_store_fsyncs_total")
    # a sync request's records reach the journal with the next flush (not waited for)
    assert wait_until(lambda: total(scrape(c.url), "olol_store_journal_records_total") >
                      total(before, "olol_store_journal_records_total"))
    assert total(after, "olol_health_sweeps_total") >= 1
    for a in c.agents:
        assert total(after, "olol_node_state", node=a.address, state="healthy") == 1
        assert total(after, "olol_node_slots", node=a.address) == 4


def test_queue_depth_and_oldest_wait_while_requests_wait(make_cluster):
    # one slot, a slow model: the second and third requests wait in the queue
    c = make_cluster(nodes=1, parallel=1, models="slow:1b[tps=20]")
    import threading

    results = []

    def chat():
        body = {"model": "slow:1b", "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 40}, "stream": False}
        results.append(requests.post(c.url + "/api/chat", json=body, timeout=60).status_code)

    threads = [threading.Thread(target=chat, name=f"t-chat-{i}") for i in range(3)]
    for t in threads:
        t.start()

    def waiting() -> bool:
        s = scrape(c.url)
        return (total(s, "olol_queue_depth", model="slow:1b", status="pending") >= 1
                and total(s, "olol_queue_oldest_wait_seconds", model="slow:1b") > 0)

    assert wait_until(waiting, timeout=20)
    s = scrape(c.url)
    assert total(s, "olol_queue_depth", model="slow:1b", status="processing") == 1
    assert total(s, "olol_node_slots_busy", node=c.agents[0].address) == 1
    for t in threads:
        t.join(timeout=60)
    assert results == [200, 200, 200]
    assert wait_until(lambda: total(scrape(c.url), "olol_queue_depth") == 0)


def test_metrics_need_an_admin_key_unless_public(make_cluster):
    c = make_cluster(nodes=1, keys_enabled=True)
    keys = KeyStore(c.proxy.db)
    _, user = keys.create("user")
    _, admin = keys.create("ops", admin=True)
    assert requests.get(c.url + "/metrics", timeout=10).status_code == 401
    r = requests.get(c.url + "/metrics", headers={"Authorization": f"Bearer {user}"},
                     timeout=10)
    assert r.status_code == 403 and "admin" in r.json()["error"]
    samples = scrape(c.url, {"Authorization": f"Bearer {admin}"})
    assert total(samples, "olol_node_up") == 1

    c2 = make_cluster(nodes=1, keys_enabled=True, metrics_public=True)
    assert total(scrape(c2.url), "olol_node_up") == 1
    # only /metrics is opened
    assert requests.get(c2.url + "/olol/v1/nodes", timeout=10).status_code == 401


def test_openmetrics_on_request(make_cluster):
    c = make_cluster(nodes=1)
    r = requests.get(c.url + "/metrics", timeout=10,
                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


# ---------------------------------------------------------------------- request log
def test_one_request_line_per_request_in_both_formats(make_cluster, caplog):
    import json
    import logging

    caplog.set_level(logging.INFO, logger="olol.requests")
    text = make_cluster(nodes=1)
    as_json = make_cluster(nodes=1, log_format="json")
    for c in (text, as_json):
        r = requests.post(c.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
        assert r.status_code == 200

    def lines(node: str) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "olol.requests" and node in r.getMessage()]

    assert wait_until(lambda: len(lines(text.agents[0].address)) == 1
                      and len(lines(as_json.agents[0].address)) == 1)
    [plain] = lines(text.agents[0].address)
    assert plain.startswith("request id=") and " key=- model=llama3.2:1b " in plain
    assert f" node={text.agents[0].address} status=completed route=/api/chat " in plain
    assert " queue_ms=" in plain and " duration_ms=" in plain
    [line] = lines(as_json.agents[0].address)
    fields = json.loads(line)
    assert fields["status"] == "completed" and fields["node"] == as_json.agents[0].address
    assert fields["model"] == "llama3.2:1b" and fields["duration_ms"] >= 0


def test_request_log_off(make_cluster, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="olol.requests")
    c = make_cluster(nodes=1, request_log=False)
    r = requests.post(c.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
    assert r.status_code == 200
    assert wait_until(lambda: total(scrape(c.url), "olol_requests_total") == 1)
    assert not [r for r in caplog.records if r.name == "olol.requests"]


def test_ttft_tokens_and_load_time_from_the_dispatcher(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=200,ttft=0.05,load=0.3]")
    for stream in (True, False, True):  # the first one loads the model
        r = requests.post(c.url + "/api/chat", json={**CHAT, "stream": stream}, timeout=30)
        assert r.status_code == 200
    assert wait_until(lambda: total(scrape(c.url), "olol_requests_total") == 3)
    s = scrape(c.url)
    assert total(s, "olol_request_ttft_seconds_count", model="llama3.2:1b") == 2
    assert total(s, "olol_request_ttft_seconds_sum", model="llama3.2:1b") >= 0.1
    assert total(s, "olol_tokens_total", model="llama3.2:1b", type="completion") > 0
    assert total(s, "olol_request_tokens_per_second_count", model="llama3.2:1b") == 3
    assert total(s, "olol_node_generated_tokens_total", node=c.agents[0].address) > 0
    assert total(s, "olol_model_load_seconds_count", node=c.agents[0].address) == 1
