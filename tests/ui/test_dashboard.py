"""The dashboard through a live proxy: log-in and log-out, who may look, CSRF on the
actions, the state endpoint's shape and the page weight."""

from __future__ import annotations

import re

import ollama
import pytest
import requests

from olol.ui.state import VIEWS
from tests.support import wait_until

UI = "/olol/ui"
PAGE_BUDGET = 300 * 1024


def login(live, key: str | None = None) -> requests.Session:
    s = requests.Session()
    r = s.post(live.url + UI + "/login", data={"key": key or live.admin_key, "next": "nodes"},
               allow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["Location"] == UI + "/nodes"
    return s


def csrf_of(html: str) -> str:
    m = re.search(r'<meta name="olol-csrf" content="([^"]+)">', html)
    assert m, "the page carries no CSRF token"
    return m.group(1)


# -- log-in ------------------------------------------------------------------------------

def test_pages_send_a_stranger_to_the_login_form(keyed):
    r = requests.get(keyed.url + UI + "/models", allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == UI + "/login?next=models"
    form = requests.get(keyed.url + UI + "/login?next=models")
    assert form.status_code == 200 and 'name="key"' in form.text
    assert "Content-Security-Policy" in form.headers
    api = requests.get(keyed.url + UI + "/api/state")
    assert api.status_code == 401 and "log in" in api.json()["error"]
    fragment = requests.get(keyed.url + UI + "/nodes?fragment=1", allow_redirects=False)
    assert fragment.status_code == 401
    # the static files are public (nothing secret in them)
    assert requests.get(keyed.url + UI + "/static/ui.js").status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(keyed):
    s = requests.Session()
    r = s.post(keyed.url + UI + "/login", data={"key": keyed.admin_key, "next": "queue"},
               allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == UI + "/queue"
    cookie = r.headers["Set-Cookie"]
    assert keyed.admin_key not in cookie
    for attr in ("HttpOnly", "SameSite=Strict", "Path=/olol/ui"):
        assert attr in cookie, cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    page = s.get(keyed.url + UI + "/queue")
    assert page.status_code == 200 and 'id="queue-depth"' in page.text
    token = csrf_of(page.text)
    # log-out is a state change: without the token it is refused
    assert s.post(keyed.url + UI + "/logout", allow_redirects=False).status_code == 403
    out = s.post(keyed.url + UI + "/logout", data={"csrf": token}, allow_redirects=False)
    assert out.status_code == 303 and out.headers["Location"] == UI + "/login"
    old = requests.get(keyed.url + UI + "/api/state",
                       cookies={"olol_ui": r.cookies["olol_ui"]})
    assert old.status_code == 401


@pytest.mark.parametrize("which,status,text", [
    ("nonsense", 401, "not valid"), ("user", 403, "not an admin key"), ("", 401, "not valid")])
def test_a_wrong_key_is_refused(keyed, which, status, text):
    key = {"nonsense": "olol-" + "x" * 40, "user": keyed.user_key, "": ""}[which]
    r = requests.post(keyed.url + UI + "/login", data={"key": key}, allow_redirects=False)
    assert r.status_code == status and text in r.text
    assert "Set-Cookie" not in r.headers


def test_a_revoked_key_ends_its_sessions(keyed):
    key_id, token = keyed.proxy.keys.create("short-lived", admin=True)
    s = login(keyed, token)
    assert s.get(keyed.url + UI + "/api/state?view=nodes").status_code == 200
    keyed.proxy.keys.revoke(key_id)
    assert s.get(keyed.url + UI + "/api/state?view=nodes").status_code == 401


def test_the_cookie_is_no_credential_outside_the_dashboard(keyed):
    s = login(keyed)
    cookie = {"Cookie": "olol_ui=" + s.cookies["olol_ui"]}
    for method, path in [("GET", "/olol/v1/nodes"), ("GET", "/olol/v1/models"),
                         ("GET", "/api/tags"), ("GET", "/metrics"), ("GET", "/v1/models"),
                         ("POST", "/api/generate"), ("POST", "/olol/v1/models/pull")]:
        body = b'{"model":"llama3.2:1b","prompt":"hi"}' if method == "POST" else None
        r = requests.request(method, keyed.url + path, headers=cookie, data=body)
        assert r.status_code == 401, (path, r.status_code)
    # paths that look like the dashboard's but are not its routes are not opened either
    r = requests.post(keyed.url + UI + "/../api/generate", headers=cookie,
                      data=b'{"model":"llama3.2:1b","prompt":"hi"}')
    assert r.status_code in (401, 404)


def test_header_keys_follow_the_api_rules(keyed):
    ok = requests.get(keyed.url + UI + "/api/state?view=queue",
                      headers={"Authorization": f"Bearer {keyed.admin_key}"})
    assert ok.status_code == 200 and "queue" in ok.json()
    user = requests.get(keyed.url + UI + "/nodes",
                        headers={"Authorization": f"Bearer {keyed.user_key}"})
    assert user.status_code == 403 and user.json()["error"] == "the dashboard needs an admin API key"
    bad = requests.get(keyed.url + UI + "/nodes", headers={"Authorization": "Bearer olol-nope"})
    assert bad.status_code == 401


def test_door_bounds_dashboard_bodies(keyed):
    big = requests.post(keyed.url + UI + "/login", data={"key": "x" * (70 * 1024)})
    assert big.status_code == 413
    # the door still refuses an API body without a key on its headers
    r = requests.post(keyed.url + "/api/generate", data=b'{"model":"m","prompt":"x"}')
    assert r.status_code == 401


# -- actions and CSRF --------------------------------------------------------------------

def test_actions_need_the_sessions_csrf_token(keyed):
    s = login(keyed)
    token = csrf_of(s.get(keyed.url + UI + "/models").text)
    other = csrf_of(login(keyed).get(keyed.url + UI + "/models").text)
    url = keyed.url + UI + "/api/plan/apply"
    assert s.post(url, json={"plan_id": "x"}).status_code == 403
    assert s.post(url, json={"plan_id": "x"}, headers={"X-OLOL-CSRF": other}).status_code == 403
    r = s.post(url, json={"plan_id": "x"}, headers={"X-OLOL-CSRF": token})
    assert r.status_code == 409 and "plan changed" in r.json()["error"]
    r = s.post(url, json={}, headers={"X-OLOL-CSRF": token})
    assert r.status_code == 400
    pull = keyed.url + UI + "/api/pull"
    assert s.post(pull, json={"model": "qwen2.5:0.5b"}).status_code == 403
    r = s.post(pull, json={"model": "qwen2.5:0.5b", "nodes": ["10.9.9.9:1"]},
               headers={"X-OLOL-CSRF": token})
    assert r.status_code == 400 and "unknown node" in r.json()["error"]
    r = s.post(pull, json={"model": "bad name!"}, headers={"X-OLOL-CSRF": token})
    assert r.status_code == 400
    r = s.post(pull, json={"model": "qwen2.5:0.5b"}, headers={"X-OLOL-CSRF": token})
    assert r.status_code == 202, r.text
    assert r.json()["model"] == "qwen2.5:0.5b" and r.json()["nodes"] == [keyed.agents[0].address]
    assert wait_until(lambda: "qwen2.5:0.5b" in keyed.proxy.cluster.list_nodes()[0]
                      .available_models or _refresh(keyed), timeout=20)
    jobs = s.post(keyed.url + UI + "/api/jobs/no-such-job/run", headers={"X-OLOL-CSRF": token})
    assert jobs.status_code == 404


def _refresh(live) -> bool:
    live.proxy.cluster.refresh(live.agents[0].address)
    return False


def test_with_keys_off_the_dashboard_is_open_but_actions_still_need_the_token(open_proxy):
    url = open_proxy.url
    r = requests.get(url + UI + "/login", allow_redirects=False)
    assert r.status_code == 303
    page = requests.get(url + UI + "/maintenance")
    assert page.status_code == 200 and 'id="jobs"' in page.text and "Log out" not in page.text
    job = "queue-cleanup"
    assert requests.post(url + UI + f"/api/jobs/{job}/run").status_code == 403
    r = requests.post(url + UI + f"/api/jobs/{job}/run",
                      headers={"X-OLOL-CSRF": csrf_of(page.text)})
    assert r.status_code == 200 and r.json()["outcome"] == "ok"


# -- state, pages, weight ----------------------------------------------------------------

def test_state_has_every_view_in_its_shape(keyed):
    client = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {keyed.admin_key}"})
    client.generate(model="llama3.2:1b", prompt="hello", options={"num_predict": 4})
    s = login(keyed)

    def state():
        return s.get(keyed.url + UI + "/api/state").json()

    assert wait_until(lambda: state()["traffic"]["latest"], timeout=10)
    data = state()
    assert set(data) == {"time", *VIEWS}
    node = data["nodes"]["nodes"][0]
    assert node["address"] == keyed.agents[0].address and node["state"] == "healthy"
    for field in ("reason", "cpu_percent", "ram_used", "ram_total", "gpus", "slots_busy",
                  "slots_total", "loaded", "models"):
        assert field in node
    assert node["slots_total"] == 4 and node["ram_total"] > 0
    q = data["queue"]
    for field in ("depth", "pending", "processing", "oldest_wait_s", "groups", "per_minute",
                  "admitted_per_minute", "rejected_per_minute"):
        assert field in q
    assert sum(p["admitted"] for p in q["per_minute"]) >= 1 and q["admitted_per_minute"] >= 1
    assert q["per_minute"][0]["minute_ts"] > q["per_minute"][-1]["minute_ts"]  # newest first
    m = data["models"]
    assert m["nodes"] == [keyed.agents[0].address]
    cells = {x["name"]: x["cells"] for x in m["models"]}
    assert cells["llama3.2:1b"][keyed.agents[0].address] in ("present", "loaded")
    assert m["plan"]["total"] == len(m["plan"]["actions"]) and len(m["plan_id"]) == 16
    assert set(m["plan"]) == {"actions", "total", "adds", "removes", "skipped", "skipped_total"}
    t = data["traffic"]
    assert len(t["series"]) == 60 and t["series"][-1]["requests"] >= 1
    latest = t["latest"][0]
    assert latest["model"] == "llama3.2:1b" and latest["node"] == keyed.agents[0].address
    assert latest["status"] == "completed" and latest["duration_ms"] is not None
    jobs = {j["id"]: j for j in data["maintenance"]["jobs"]}
    assert "health-poll" in jobs and jobs["health-poll"]["next_run"]
    one = s.get(keyed.url + UI + "/api/state?view=nodes,queue").json()
    assert set(one) == {"time", "nodes", "queue"}
    bad = s.get(keyed.url + UI + "/api/state?view=nodes,secrets")
    assert bad.status_code == 400 and "unknown view" in bad.json()["error"]


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_renders_and_weighs_under_300_kb(keyed, view):
    s = login(keyed)
    page = s.get(keyed.url + f"{UI}/{view}")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert f'aria-current="page">{view.capitalize()}<' in page.text
    assets = re.findall(r'(?:href|src)="(/olol/ui/static/[^"]+)"', page.text)
    assert len(assets) == 2  # ui.css and ui.js, nothing from elsewhere
    assert not re.search(r'(?:href|src)="https?://', page.text)
    weight = len(page.content)
    for path in assets:
        r = s.get(keyed.url + path)
        assert r.status_code == 200 and "max-age" in r.headers.get("Cache-Control", "")
        weight += len(r.content)
    assert weight < PAGE_BUDGET, f"{view}: {weight} bytes"
    fragment = s.get(keyed.url + f"{UI}/{view}?fragment=1")
    assert fragment.status_code == 200 and "<html" not in fragment.text


def test_unknown_views_are_404(keyed):
    s = login(keyed)
    assert s.get(keyed.url + UI + "/secrets").status_code == 404
    assert s.get(keyed.url + UI + "/", allow_redirects=False).headers["Location"] == UI + "/nodes"


def test_every_page_weighs_under_300_kb_with_200_nodes_and_50_models():
    from olol.server.app import create_app
    from tests.bench.bench_ui import MODELS, NODES, build_ctx

    ctx = build_ctx()
    try:
        client = create_app(ctx).test_client()
        state = client.get(UI + "/api/state?view=nodes,models").get_json()
        assert len(state["nodes"]["nodes"]) == NODES and len(state["models"]["models"]) == MODELS
        assert state["models"]["plan"]["total"] > len(state["models"]["plan"]["actions"])
        for view in VIEWS:
            page = client.get(f"{UI}/{view}")
            assert page.status_code == 200
            weight = len(page.data) + sum(
                len(client.get(path).data)
                for path in re.findall(r'(?:href|src)="(/olol/ui/static/[^"]+)"', page.text))
            assert weight < PAGE_BUDGET, f"{view}: {weight} bytes"
    finally:
        ctx.registry.close()
        ctx.db.close()
