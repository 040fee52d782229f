"""``olol nodes``: the --data-dir path on a real store, the HTTP path on a real server."""

from __future__ import annotations

import argparse
import json
import threading

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from olol import cli
from olol.cli.nodes import register
from olol.cluster import ClusterManager
from olol.store import DatabaseManager

ADMIN_KEY = "sk-admin-test"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="olol")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


# -- --data-dir ----------------------------------------------------------------------------


def test_data_dir_add_ls_rm(tmp_path, capsys):
    folder = str(tmp_path / "data")
    assert run(["nodes", "add", "10.0.0.1:50051", "--data-dir", folder]) == 0
    assert run(["nodes", "add", "gpu2:50051", "--data-dir", folder]) == 0
    assert "added gpu2:50051" in capsys.readouterr().out

    assert run(["nodes", "ls", "--json", "--data-dir", folder]) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert [n["address"] for n in nodes] == ["10.0.0.1:50051", "gpu2:50051"]
    assert all(n["source"] == "cli" and n["healthy"] is False for n in nodes)

    assert run(["nodes", "ls", "--data-dir", folder]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["ADDRESS", "HEALTHY", "SOURCE"]
    assert table[1].split()[:3] == ["10.0.0.1:50051", "no", "cli"]

    assert run(["nodes", "rm", "gpu2:50051", "--data-dir", folder]) == 0
    assert run(["nodes", "rm", "gpu2:50051", "--data-dir", folder]) == 1
    assert "no such node" in capsys.readouterr().err

    with DatabaseManager(folder) as db:  # what a proxy would load at start
        assert [n.address for n in ClusterManager(db).list_nodes()] == ["10.0.0.1:50051"]


def test_data_dir_in_use_by_a_proxy_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "data"
    with DatabaseManager(folder):
        assert run(["nodes", "ls", "--data-dir", str(folder)]) == 3
    err = capsys.readouterr().err
    assert "in use" in err and "Traceback" not in err


def test_bad_address_and_conflicting_options(tmp_path, capsys):
    folder = str(tmp_path / "data")
    assert run(["nodes", "add", "not-an-address", "--data-dir", folder]) == 2
    assert "no port (HOST:PORT)" in capsys.readouterr().err
    assert run(["nodes", "ls", "--data-dir", folder, "--url", "http://127.0.0.1:1"]) == 2


def test_empty_list(tmp_path, capsys):
    assert run(["nodes", "ls", "--data-dir", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().out.strip() == "no nodes"


# -- HTTP admin API --------------------------------------------------------------------------


def admin_app(cluster: ClusterManager) -> Flask:
    """The three admin routes the front door serves, backed by a real ClusterManager."""
    app = Flask("test-admin")

    @app.before_request
    def check_key():
        if request.headers.get("Authorization") != f"Bearer {ADMIN_KEY}":
            return jsonify(error="unauthorized"), 401
        return None

    @app.get("/olol/v1/nodes")
    def ls():
        return jsonify(nodes=[n.to_dict() for n in cluster.list_nodes()])

    @app.post("/olol/v1/nodes")
    def add():
        body = request.get_json(silent=True) or {}
        try:
            node = cluster.add_node(body.get("address"), source="api")
        except ValueError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(node.to_dict()), 201

    @app.delete("/olol/v1/nodes/<path:address>")
    def rm(address):
        if not cluster.remove_node(address):
            return jsonify(error=f"node {address!r} not found"), 404
        return jsonify(removed=address), 200

    return app


@pytest.fixture
def proxy(db, clock):
    cluster = ClusterManager(db, clock=clock)
    server = make_server("127.0.0.1", 0, admin_app(cluster), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-admin-http")
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", cluster
    server.shutdown()
    thread.join(timeout=5)
    cluster.close()


def test_http_add_ls_rm(proxy, monkeypatch, capsys):
    url, cluster = proxy
    monkeypatch.setenv("OLOL_API_KEY", ADMIN_KEY)
    monkeypatch.setenv("OLOL_URL", url)
    assert run(["nodes", "add", "10.1.1.1:50051"]) == 0
    assert [n.address for n in cluster.list_nodes()] == ["10.1.1.1:50051"]
    assert cluster.node("10.1.1.1:50051").source == "api"

    assert run(["nodes", "ls", "--json"]) == 0
    out = capsys.readouterr().out
    assert [n["address"] for n in json.loads(out[out.index("["):])] == ["10.1.1.1:50051"]

    assert run(["nodes", "rm", "10.1.1.1:50051", "--url", url]) == 0
    assert cluster.list_nodes() == []
    assert run(["nodes", "rm", "10.1.1.1:50051"]) == 1
    assert "no such node" in capsys.readouterr().err


def test_http_ipv6_address_round_trips(proxy, monkeypatch):
    url, cluster = proxy
    monkeypatch.setenv("OLOL_API_KEY", ADMIN_KEY)
    assert run(["nodes", "add", "[::1]:50051", "--url", url]) == 0
    assert run(["nodes", "rm", "[::1]:50051", "--url", url]) == 0
    assert cluster.list_nodes() == []


def test_http_wrong_key_is_reported(proxy, monkeypatch, capsys):
    url, _ = proxy
    monkeypatch.setenv("OLOL_API_KEY", "wrong")
    assert run(["nodes", "ls", "--url", url]) == 1
    err = capsys.readouterr().err
    assert "answered 401" in err and "OLOL_API_KEY" in err and "unauthorized" in err


def test_http_no_proxy_is_a_clear_error(monkeypatch, capsys):
    from tests.cluster.conftest import free_port

    monkeypatch.delenv("OLOL_URL", raising=False)
    assert run(["nodes", "ls", "--url", f"http://127.0.0.1:{free_port()}",
                "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the olol proxy" in err and "Traceback" not in err


def test_through_the_olol_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["olol.cli.nodes"])
    folder = str(tmp_path / "data")
    assert cli.main(["nodes", "add", "10.9.9.9:1", "--data-dir", folder]) == 0
    assert cli.main(["nodes", "ls", "--data-dir", folder]) == 0
    assert "10.9.9.9:1" in capsys.readouterr().out
