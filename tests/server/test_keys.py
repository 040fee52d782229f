"""API keys: the KeyStore, the ``olol keys`` CLI, and enforcement by the front door."""

from __future__ import annotations

import argparse
import json

import ollama
import openai
import pytest
import requests

from olol.cli.keys import register
from olol.keys import KeyStore, token_digest
from olol.store import DatabaseManager
from tests.server.conftest import build_ctx, serve


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_create_verify_revoke_roundtrip():
    clock = Clock()
    db = DatabaseManager.memory(clock=clock)
    keys = KeyStore(db, clock)
    key_id, token = keys.create("ci", admin=True, default_priority=7)
    assert token.startswith("olol-") and len(token) > 40
    info = keys.verify(token)
    assert info is not None
    assert (info.id, info.name, info.admin, info.default_priority) == (key_id, "ci", True, 7)
    # only the digest is stored, never the token
    stored = db.all("api_keys")
    assert len(stored) == 1 and token not in json.dumps(stored)
    assert stored[0]["hash"] == token_digest(token)
    assert keys.verify(token + "x") is None
    assert keys.verify("") is None and keys.verify(None) is None
    assert keys.revoke(key_id) is True
    assert keys.verify(token) is None
    assert keys.revoke("key_nope") is False
    assert [k.revoked for k in keys.list()] == [True]


def test_last_used_is_written_at_most_once_a_minute():
    clock = Clock()
    db = DatabaseManager.memory(clock=clock)
    keys = KeyStore(db, clock)
    _, token = keys.create("app")
    keys.verify(token)
    first = keys.list()[0].last_used_at
    assert first is not None
    clock.now += 10
    keys.verify(token)
    assert keys.list()[0].last_used_at == first
    clock.now += 61
    keys.verify(token)
    assert keys.list()[0].last_used_at != first


def test_create_rejects_bad_input():
    keys = KeyStore(DatabaseManager.memory())
    with pytest.raises(ValueError):
        keys.create("  ")
    with pytest.raises(ValueError):
        keys.create("x", default_priority="high")  # type: ignore[arg-type]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="olol")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_create_ls_revoke(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert _cli(["keys", "create", "admin-bootstrap", "--admin", "--json", "--data-dir", data]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["admin"] is True and created["key"].startswith("olol-")
    assert _cli(["keys", "ls", "--json", "--data-dir", data]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [k["id"] for k in listed] == [created["id"]]
    assert created["key"] not in json.dumps(listed)
    # the key made offline is valid when the store is opened again
    db = DatabaseManager(tmp_path / "data")
    try:
        assert KeyStore(db).verify(created["key"]).admin is True
    finally:
        db.close()
    assert _cli(["keys", "revoke", created["id"], "--data-dir", data]) == 0
    assert _cli(["keys", "revoke", "key_unknown", "--data-dir", data]) == 1
    assert "no key" in capsys.readouterr().err
    assert _cli(["keys", "ls", "--data-dir", data]) == 0
    assert "revoked" in capsys.readouterr().out


def test_cli_refuses_a_folder_in_use(tmp_path, capsys, monkeypatch):
    # the CLI then asks the proxy at the default URL: make sure none answers there
    monkeypatch.setenv("OLOL_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OLOL_CONFIG", str(tmp_path / "none.toml"))
    db = DatabaseManager(tmp_path / "data")
    try:
        assert _cli(["keys", "ls", "--data-dir", str(tmp_path / "data")]) == 1
        err = capsys.readouterr().err
        assert "in use by another olol process" in err
    finally:
        db.close()


@pytest.fixture()
def keyed(agent):
    ctx = build_ctx([agent.address], keys_enabled=True)
    admin_id, admin_token = ctx.keys.create("admin", admin=True)
    user_id, user_token = ctx.keys.create("user", default_priority=5)
    with serve(ctx) as served:
        yield served, admin_token, user_token, user_id


def test_missing_or_bad_key_is_401_in_each_api_shape(keyed):
    served, _, _, _ = keyed
    r = requests.get(f"{served.url}/api/tags", timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": "a valid API key is required (Authorization: Bearer <key>)"}
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(f"{served.url}/v1/models", headers={"Authorization": "Bearer nope"},
                     timeout=5)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    # liveness probes need no key
    assert requests.get(f"{served.url}/olol/v1/health", timeout=5).status_code == 200
    assert requests.get(f"{served.url}/", timeout=5).text == "Ollama is running"


def test_official_clients_with_keys(keyed):
    served, _, user_token, _ = keyed
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=served.url).list()
    assert err.value.status_code == 401
    listed = ollama.Client(host=served.url, headers={"Authorization": f"Bearer {user_token}"})
    assert "llama3.2:1b" in [m.model for m in listed.list().models]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()
    oa = openai.OpenAI(base_url=f"{served.url}/v1", api_key=user_token, max_retries=0)
    assert "llama3.2:1b" in [m.id for m in oa.models.list()]


def test_admin_routes_need_an_admin_key(keyed, agent):
    served, admin_token, user_token, _ = keyed
    user = {"Authorization": f"Bearer {user_token}"}
    admin = {"Authorization": f"Bearer {admin_token}"}
    r = requests.get(f"{served.url}/olol/v1/nodes", headers=user, timeout=5)
    assert r.status_code == 403 and "admin" in r.json()["error"]
    r = requests.get(f"{served.url}/olol/v1/nodes", headers=admin, timeout=5)
    assert r.status_code == 200
    assert [n["address"] for n in r.json()["nodes"]] == [agent.address]
    assert requests.get(f"{served.url}/olol/v1/queue", headers=user, timeout=5).status_code == 403


def test_revoked_key_is_refused(keyed):
    served, _, _, _ = keyed
    key_id, token = served.ctx.keys.create("temp")
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{served.url}/api/ps", headers=headers, timeout=5).status_code == 200
    served.ctx.keys.revoke(key_id)
    assert requests.get(f"{served.url}/api/ps", headers=headers, timeout=5).status_code == 401


def test_key_default_priority_and_id_reach_the_record(keyed):
    served, _, user_token, user_id = keyed
    headers = {"Authorization": f"Bearer {user_token}"}
    body = {"endpoint": "generate", "body": {"model": "llama3.2:1b", "prompt": "hi"}}
    r = requests.post(f"{served.url}/olol/v1/jobs", json=body, headers=headers, timeout=5)
    assert r.status_code == 202, r.text
    record = served.ctx.queue.get(r.json()["id"])
    assert record["priority"] == 5 and record["key_id"] == user_id
    # an explicit header wins over the key's default
    r = requests.post(f"{served.url}/olol/v1/jobs", json=body, timeout=5,
                      headers={**headers, "X-OLOL-Priority": "-3"})
    assert served.ctx.queue.get(r.json()["id"])["priority"] == -3


def test_a_keys_priority_is_its_ceiling_except_for_admin_keys(keyed):
    served, admin_token, user_token, _ = keyed
    body = {"endpoint": "generate", "body": {"model": "llama3.2:1b", "prompt": "hi"}}

    def priority(token, header=None, field=None):
        headers = {"Authorization": f"Bearer {token}"}
        if header is not None:
            headers["X-OLOL-Priority"] = header
        job = dict(body, priority=field) if field is not None else body
        r = requests.post(f"{served.url}/olol/v1/jobs", json=job, headers=headers, timeout=5)
        assert r.status_code == 202, r.text
        return served.ctx.queue.get(r.json()["id"])["priority"]

    assert priority(user_token, header="100") == 5  # cannot jump the queue
    assert priority(user_token, field=100) == 5
    assert priority(user_token, header="2") == 2  # may lower it
    assert priority(admin_token, header="100") == 100


def test_cli_through_olol_main(tmp_path, monkeypatch, capsys):
    import olol.cli

    monkeypatch.setattr(olol.cli, "COMMAND_MODULES", ["olol.cli.keys"])
    data = str(tmp_path / "d")
    assert olol.cli.main(["keys", "create", "svc", "--priority", "3", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "key: olol-" in out and "not shown again" in out
    assert olol.cli.main(["keys", "ls", "--data-dir", data]) == 0
    assert "svc" in capsys.readouterr().out


def test_active_key_names_differ_by_more_than_case():
    keys = KeyStore(DatabaseManager.memory())
    key_id, _ = keys.create("CI-bot")
    with pytest.raises(ValueError, match="already named 'CI-bot'"):
        keys.create("ci-BOT")
    # a revoked key's name is free again, whatever its case
    keys.revoke(key_id)
    keys.create("ci-bot")
    assert sorted(k.name for k in keys.list()) == ["CI-bot", "ci-bot"]


def test_concurrent_creations_of_one_name_make_one_key():
    import threading
    import time

    db = DatabaseManager.memory()
    read_all = db.all

    def slow_all(*args, **kw):  # a store a round trip away: reads take a while
        rows = read_all(*args, **kw)
        time.sleep(0.02)
        return rows

    db.all = slow_all  # type: ignore[method-assign]
    keys = KeyStore(db)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def create(i: int) -> None:
        start.wait(timeout=10)
        try:
            keys.create("Shared" if i % 2 else "shared")
            outcomes.append("made")
        except ValueError:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(i,), name=f"create-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(outcomes) == ["made"] + ["refused"] * 7
    assert len(keys.list()) == 1
