"""Priority, coalescing, embedding merge and backpressure through the live proxy."""

import threading

import ollama
import requests

from tests.support import record_sim_calls, wait_until

SLOW = "llama3.2:1b[tps=200],nomic-embed-text[embed]"


def submit_job(url, body, endpoint="chat", priority=None):
    env = {"endpoint": endpoint, "body": body}
    if priority is not None:
        env["priority"] = priority
    r = requests.post(url + "/olol/v1/jobs", json=env, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def job(url, job_id):
    return requests.get(f"{url}/olol/v1/jobs/{job_id}", timeout=10).json()


def all_claimable(c, model, n):
    """``n`` requests for ``model`` wait in the queue where a dispatcher can claim them.

    ``queue.depth()`` is not that: it counts a request from its admission, before
    its store insert returns and it enters the pending index; released early, the
    node would serve the requests claimable by then and the late ones in a
    second call."""
    return len(c.proxy.queue.peek_summaries(model=model)) >= n


def chat(prompt, **options):
    return {"model": "llama3.2:1b", "messages": [{"role": "user", "content": prompt}],
            "options": options}


def test_higher_priority_runs_first_fifo_within_a_priority(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1)
    sim = c.sims[0]
    sim.faults.hang_next(1)
    blocker = submit_job(c.url, chat("block"))
    assert wait_until(lambda: sim.faults.hanging() == 1)
    low = [submit_job(c.url, chat(f"low {i}"), priority=0) for i in range(3)]
    high = [submit_job(c.url, chat(f"high {i}"), priority=5) for i in range(3)]
    sim.faults.release()
    ids = [blocker, *low, *high]
    assert wait_until(lambda: all(job(c.url, j)["status"] == "completed" for j in ids), timeout=30)
    started = sorted(ids[1:], key=lambda j: job(c.url, j)["started_at"])
    assert started == high + low


def test_identical_seeded_requests_share_one_inference(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1)
    sim = c.sims[0]
    sim.faults.hang_next(1)
    blocker = threading.Thread(
        target=lambda: ollama.Client(host=c.url).chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}]),
        name="blocker")
    blocker.start()
    assert wait_until(lambda: sim.faults.hanging() == 1)
    before = sim.stats()["generations_started"]
    answers, errors = [], []

    def ask():
        try:
            r = ollama.Client(host=c.url).chat(
                model="llama3.2:1b", messages=[{"role": "user", "content": "same question"}],
                options={"seed": 42})
            answers.append(r.message.content)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, name=f"ask-{i}") for i in range(5)]
    for t in threads:
        t.start()
    assert wait_until(lambda: all_claimable(c, "llama3.2:1b", 5))
    sim.faults.release()
    for t in threads + [blocker]:
        t.join(timeout=30)
    assert errors == []
    assert len(answers) == 5 and len(set(answers)) == 1
    # the hung blocker had not started generating: it and the five identical
    # requests make two generations in all
    assert sim.stats()["generations_started"] - before == 2


def test_embedding_requests_for_one_model_are_merged(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1)
    sim = c.sims[0]
    # POST /api/embed only: requests_total would count health polls too
    embed_calls = record_sim_calls(sim, "embed")
    sim.faults.hang_next(1)
    blocker = threading.Thread(
        target=lambda: ollama.Client(host=c.url).embed(model="nomic-embed-text", input="block"),
        name="blocker")
    blocker.start()
    assert wait_until(lambda: sim.faults.hanging() == 1)
    inputs = {i: [f"text {i}", f"more {i}"] for i in range(6)}
    results = {}

    def embed(i):
        results[i] = ollama.Client(host=c.url).embed(model="nomic-embed-text", input=inputs[i])

    threads = [threading.Thread(target=embed, args=(i,), name=f"embed-{i}") for i in range(6)]
    for t in threads:
        t.start()
    assert wait_until(lambda: all_claimable(c, "nomic-embed-text", 6))
    sim.faults.release()
    for t in threads + [blocker]:
        t.join(timeout=30)
    assert len(results) == 6
    # the node saw two /api/embed calls: the blocker's, then one carrying all six
    # requests, each request's inputs next to each other
    assert len(embed_calls) == 2, embed_calls
    assert embed_calls[0]["input"] == "block"
    merged = embed_calls[1]["input"]
    pairs = [tuple(merged[k:k + 2]) for k in range(0, len(merged), 2)]
    assert sorted(pairs) == sorted(tuple(v) for v in inputs.values())
    direct = ollama.Client(host=sim.url)
    for i, r in results.items():
        assert r.embeddings == direct.embed(model="nomic-embed-text", input=inputs[i]).embeddings


def test_full_queue_answers_503_with_retry_after_and_loses_nothing(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1, max_queue_depth=3)
    sim = c.sims[0]
    sim.faults.hang_next(1)
    accepted = [submit_job(c.url, chat("first"))]
    assert wait_until(lambda: sim.faults.hanging() == 1)
    accepted += [submit_job(c.url, chat(f"n{i}")) for i in range(2)]
    r = requests.post(c.url + "/olol/v1/jobs", json={"endpoint": "chat", "body": chat("over")}, timeout=10)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    r = requests.post(c.url + "/api/chat", json={**chat("over"), "stream": False}, timeout=10)
    assert r.status_code == 503 and "server busy" in r.json()["error"]
    assert int(r.headers["Retry-After"]) >= 1
    sim.faults.release()
    assert wait_until(lambda: all(job(c.url, j)["status"] == "completed" for j in accepted), timeout=30)
    assert all(job(c.url, j)["result"]["message"]["content"] for j in accepted)


def test_jobs_api_lifecycle(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1)
    sim = c.sims[0]
    sim.faults.hang_next(1)
    first = submit_job(c.url, chat("first"))
    assert wait_until(lambda: sim.faults.hanging() == 1)
    second = submit_job(c.url, chat("second"))
    r = requests.delete(f"{c.url}/olol/v1/jobs/{second}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    sim.faults.release()
    assert wait_until(lambda: job(c.url, first)["status"] == "completed", timeout=30)
    listed = requests.get(c.url + "/olol/v1/jobs", timeout=10).json()["jobs"]
    assert {j["id"]: j["status"] for j in listed} == {first: "completed", second: "cancelled"}
    assert requests.get(c.url + "/olol/v1/jobs/nope", timeout=10).status_code == 404


def test_cancelling_a_running_job_stops_the_generation_on_its_node(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=20]", sim_kw={"response_tokens": (200, 200)})
    sim = c.sims[0]
    job_id = submit_job(c.url, chat("a long answer"))
    assert wait_until(lambda: sim.stats()["active_generations"] == 1)
    r = requests.delete(f"{c.url}/olol/v1/jobs/{job_id}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert wait_until(lambda: sim.stats()["generations_cancelled"] == 1, timeout=10)
    assert sim.stats()["active_generations"] == 0
    assert job(c.url, job_id)["status"] == "cancelled"
    # the node is not blamed for it: the next request runs there at once
    after = submit_job(c.url, chat("next", num_predict=3))
    assert wait_until(lambda: job(c.url, after)["status"] == "completed", timeout=10)
