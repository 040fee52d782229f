"""The asynchronous jobs API: submit, get, list, cancel; visibility per key."""

from __future__ import annotations

import pytest
import requests

from tests.server.conftest import build_ctx, serve


@pytest.fixture()
def served(agent):
    with serve(build_ctx([agent.address])) as s:
        yield s


def submit(served, endpoint="generate", body=None, **extra):
    body = body if body is not None else {"model": "llama3.2:1b", "prompt": "hi", "stream": True}
    return requests.post(f"{served.url}/olol/v1/jobs",
                         json={"endpoint": endpoint, "body": body, **extra}, timeout=5)


def test_submit_get_list_cancel(served):
    r = submit(served, priority=9)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "pending" and job["position"] == 1
    assert r.headers["Location"] == f"/olol/v1/jobs/{job['id']}"
    record = served.ctx.queue.get(job["id"])
    assert record["kind"] == "job" and record["priority"] == 9
    assert record["stream"] is False and record["body"]["stream"] is False

    got = requests.get(f"{served.url}/olol/v1/jobs/{job['id']}", timeout=5).json()
    assert got["id"] == job["id"] and got["status"] == "pending"
    assert got["endpoint"] == "generate" and got["result"] is None and got["created_at"]
    assert "body" not in got

    second = submit(served, "embed", {"model": "nomic-embed-text", "input": ["a"]}).json()
    assert second["position"] == 2
    listed = requests.get(f"{served.url}/olol/v1/jobs?status=pending", timeout=5).json()["jobs"]
    assert {j["id"] for j in listed} == {job["id"], second["id"]}

    r = requests.delete(f"{served.url}/olol/v1/jobs/{job['id']}", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert served.ctx.queue.get(job["id"])["status"] == "cancelled"
    r = requests.delete(f"{served.url}/olol/v1/jobs/{job['id']}", timeout=5)
    assert r.status_code == 409
    listed = requests.get(f"{served.url}/olol/v1/jobs?status=pending", timeout=5).json()["jobs"]
    assert [j["id"] for j in listed] == [second["id"]]


def test_completed_job_shows_its_result(served):
    job = submit(served).json()
    queue = served.ctx.queue
    claimed = queue.dequeue(batch_size=1)
    assert [c["id"] for c in claimed] == [job["id"]]
    queue.update_request_status(job["id"], "completed", {"response": "hello", "done": True})
    got = requests.get(f"{served.url}/olol/v1/jobs/{job['id']}", timeout=5).json()
    assert got["status"] == "completed" and got["result"]["response"] == "hello"
    assert got["attempts"] == 1


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"endpoint": "pull", "body": {}}, 400, "endpoint must be one of"),
        ({"endpoint": "generate", "body": "x"}, 400, "body must be a JSON object"),
        ({"endpoint": "generate", "body": {"model": "nope", "prompt": "x"}}, 404,
         "model 'nope' not found"),
        ({"endpoint": "chat", "body": {"messages": []}}, 400, "model is required"),
        ({"endpoint": "generate", "body": {"model": "llama3.2:1b"}, "priority": "hi"}, 400,
         "priority"),
    ],
)
def test_bad_submissions(served, payload, status, fragment):
    r = requests.post(f"{served.url}/olol/v1/jobs", json=payload, timeout=5)
    assert r.status_code == status
    assert fragment in r.json()["error"]


def test_unknown_job_and_bad_filters(served):
    assert requests.get(f"{served.url}/olol/v1/jobs/nope", timeout=5).status_code == 404
    assert requests.delete(f"{served.url}/olol/v1/jobs/nope", timeout=5).status_code == 404
    r = requests.get(f"{served.url}/olol/v1/jobs?status=weird", timeout=5)
    assert r.status_code == 400
    r = requests.get(f"{served.url}/olol/v1/jobs?limit=x", timeout=5)
    assert r.status_code == 400


def test_non_admin_keys_see_only_their_jobs(agent):
    ctx = build_ctx([agent.address], keys_enabled=True)
    _, alice = ctx.keys.create("alice")
    _, bob = ctx.keys.create("bob")
    _, admin = ctx.keys.create("ops", admin=True)
    with serve(ctx) as s:
        def call(method, path, token, **kw):
            return requests.request(method, f"{s.url}{path}", timeout=5,
                                    headers={"Authorization": f"Bearer {token}"}, **kw)

        job = call("POST", "/olol/v1/jobs", alice,
                   json={"endpoint": "generate",
                         "body": {"model": "llama3.2:1b", "prompt": "x"}}).json()
        assert call("GET", f"/olol/v1/jobs/{job['id']}", alice).status_code == 200
        assert call("GET", f"/olol/v1/jobs/{job['id']}", bob).status_code == 404
        assert call("DELETE", f"/olol/v1/jobs/{job['id']}", bob).status_code == 404
        assert call("GET", "/olol/v1/jobs", bob).json()["jobs"] == []
        assert [j["id"] for j in call("GET", "/olol/v1/jobs", admin).json()["jobs"]] == [
            job["id"]
        ]
