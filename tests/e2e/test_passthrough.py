"""The pass-through: routes olol does not know, relayed through a live proxy to
simulated nodes whose Ollama serves them (``/v1/images/generations``, the
simulator's ``x-sim/echo`` stand-ins for a newer endpoint, ``GET /api/status``)."""

from __future__ import annotations

import base64

import httpx
import ollama
import openai
import orjson
import pytest

from olol.keys import KeyStore
from tests.support import wait_until

MODEL = "llama3.2:1b"
GREEDY = {"temperature": 0}


def _ready(url: str) -> None:
    assert wait_until(lambda: bool(httpx.get(url + "/api/tags").json().get("models")), 15)


@pytest.fixture
def live(cluster):
    _ready(cluster.url)
    return cluster


def test_image_generation_through_the_proxy_with_the_openai_client(live):
    oc = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)
    image = oc.images.generate(model=MODEL, prompt="a red cat", extra_body={"seed": 7})
    direct = openai.OpenAI(base_url=f"{live.sims[0].url}/v1", api_key="unused",
                           max_retries=0).images.generate(model=MODEL, prompt="a red cat",
                                                          extra_body={"seed": 7})
    png = base64.b64decode(image.data[0].b64_json)
    assert png.startswith(b"\x89PNG") and image.data[0].b64_json == direct.data[0].b64_json
    with pytest.raises(openai.NotFoundError) as err:
        oc.images.generate(model="missing-model", prompt="x")
    assert err.value.body["message"] == "model 'missing-model' not found"


def test_non_streamed_answer_keeps_status_type_and_bytes(live):
    body = {"model": MODEL, "prompt": "hello", "stream": False, "options": GREEDY}
    via = httpx.post(live.url + "/api/x-sim/echo", json=body, timeout=30)
    direct = httpx.post(live.sims[0].url + "/api/generate", json=body, timeout=30)
    assert via.status_code == 200
    assert via.headers["content-type"] == direct.headers["content-type"]
    assert via.headers["x-olol-request-id"]
    assert via.json()["response"] == direct.json()["response"] and via.json()["done"] is True
    # the node's own refusal is relayed as it is
    bad = httpx.post(live.url + "/api/x-sim/echo", json={"model": MODEL, "prompt": 5})
    assert bad.status_code == 400
    assert bad.json() == {"error": "json: cannot unmarshal into Go struct field "
                                   "GenerateRequest.prompt of type string"}


def test_streamed_ndjson_is_relayed_record_by_record(live):
    body = {"model": MODEL, "prompt": "tell me more", "options": GREEDY}
    with httpx.stream("POST", live.url + "/api/x-sim/echo", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        records = [orjson.loads(line) for line in resp.iter_lines() if line]
    want = ollama.Client(host=live.sims[1].url).generate(model=MODEL, prompt="tell me more",
                                                          options=GREEDY)
    assert len(records) > 2 and records[-1]["done"] is True
    assert all(r["done"] is False for r in records[:-1])
    assert "".join(r["response"] for r in records) == want.response


def test_streamed_server_sent_events_are_relayed(live):
    body = {"model": MODEL, "prompt": "go", "stream": True, "temperature": 0}
    with httpx.stream("POST", live.url + "/v1/x-sim/echo", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[len("data: "):]) for line in lines[:-1]]
    assert chunks and all(c["object"] == "text_completion" for c in chunks)


def test_model_on_no_node_is_404_in_the_apis_shape(live):
    native = httpx.post(live.url + "/api/x-sim/echo", json={"model": "nope:1b", "prompt": "x"})
    assert native.status_code == 404 and native.json() == {"error": "model 'nope:1b' not found"}
    v1 = httpx.post(live.url + "/v1/x-sim/echo", json={"model": "nope:1b", "prompt": "x"})
    assert v1.status_code == 404
    assert v1.json()["error"]["message"] == "model 'nope:1b' not found"


def test_without_a_model_unknown_posts_stay_404_and_known_paths_405(live):
    for body in (b'{"prompt": "x"}', b"not json", b"", b'["model"]', b'{"model": ""}'):
        resp = httpx.post(live.url + "/api/x-sim/echo", content=body)
        assert (resp.status_code, resp.text) == (404, "404 page not found")
    resp = httpx.get(live.url + "/api/chat")
    assert (resp.status_code, resp.text) == (405, "405 method not allowed")
    resp = httpx.request("PUT", live.url + "/api/x-sim/echo", json={"model": MODEL})
    assert resp.status_code in (404, 405)


def test_get_goes_to_a_healthy_node(live):
    resp = httpx.get(live.url + "/api/status")
    assert resp.status_code == 200 and resp.json() == {"cloud": {"disabled": False,
                                                                 "source": "none"}}
    missing = httpx.get(live.url + "/api/no-such-route")
    assert (missing.status_code, missing.text) == (404, "404 page not found")


def test_model_addressed_request_goes_to_a_node_that_has_it(make_cluster):
    c = make_cluster()
    _ready(c.url)
    ollama.Client(host=c.sims[0].url).delete("qwen2.5:0.5b")
    before = [s.stats().get("requests_total", 0) for s in c.sims]

    def only_second_has_it() -> bool:
        nodes = httpx.get(c.url + "/olol/v1/nodes").json()
        rows = nodes.get("nodes", nodes) if isinstance(nodes, dict) else nodes
        return sum("qwen2.5:0.5b" in orjson.dumps(r).decode() for r in rows) == 1

    assert wait_until(only_second_has_it, 15)
    for _ in range(3):
        resp = httpx.post(c.url + "/api/x-sim/echo",
                          json={"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False})
        assert resp.status_code == 200, resp.text
    generated = [s.stats().get("generations_completed", 0) for s in c.sims]
    assert generated[0] == 0 and generated[1] >= 3, (before, generated)


def test_keys_and_priority_apply(make_cluster):
    c = make_cluster(keys_enabled=True)
    keys = c.proxy.context.keys or KeyStore(c.proxy.db, c.proxy.clock)
    _, token = keys.create("caller")
    _ready_with = {"Authorization": f"Bearer {token}"}
    assert wait_until(lambda: bool(httpx.get(c.url + "/api/tags", headers=_ready_with)
                                   .json().get("models")), 15)
    body = {"model": MODEL, "prompt": "x", "stream": False}
    assert httpx.post(c.url + "/api/x-sim/echo", json=body).status_code == 401
    assert httpx.get(c.url + "/api/status").status_code == 401
    ok = httpx.post(c.url + "/api/x-sim/echo", json=body,
                    headers={**_ready_with, "X-OLOL-Priority": "5"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["done"] is True
    bad = httpx.post(c.url + "/api/x-sim/echo", json=body,
                     headers={**_ready_with, "X-OLOL-Priority": "high"})
    assert bad.status_code == 400


def test_each_answer_settles_its_record_and_frees_its_slot(live):
    """What the relay settles once the answer is out: the queue record (completed, or
    failed with the node's own status when it refused) and the node's slot."""
    ctx = live.proxy.context
    ok = httpx.post(live.url + "/api/x-sim/echo", timeout=30,
                    json={"model": MODEL, "prompt": "hello", "stream": True})
    bad = httpx.post(live.url + "/api/x-sim/echo", timeout=30,
                     json={"model": MODEL, "prompt": 5})
    assert (ok.status_code, bad.status_code) == (200, 400)

    def record(resp: httpx.Response) -> dict:
        return ctx.queue.get(resp.headers["x-olol-request-id"]) or {}

    assert wait_until(lambda: record(ok).get("status") == "completed", 10), record(ok)
    assert record(ok)["server_assigned"] in {a.address for a in live.agents}
    assert wait_until(lambda: record(bad).get("status") == "failed", 10), record(bad)
    assert record(bad)["error_status"] == 400
    assert record(bad)["error"] == "the node answered 400"
    assert wait_until(lambda: not any(ctx.scheduler.slots_in_use().values()), 10), \
        ctx.scheduler.slots_in_use()
