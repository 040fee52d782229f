"""``olol models ...`` and ``olol maintenance ls|run`` against a live front door."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from olol import cli
from olol.cli.models import ProgressView, register
from olol.maintenance import MaintenanceJobs
from tests.models_api.conftest import running_cluster


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="olol")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_models_ls_human_and_json(two_nodes, capsys):
    url = two_nodes.url
    assert run(["models", "ls", "--url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["NAME", "SIZE", "NODES"]
    row = next(line for line in out if line.startswith("llama3.2:1b "))
    assert two_nodes.nodes[0].address in row
    assert run(["models", "ls", "--url", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in data} == {"llama3.2:1b", "nomic-embed-text:latest"}


def test_models_status(two_nodes, capsys, monkeypatch):
    monkeypatch.setenv("OLOL_URL", two_nodes.url)
    assert run(["models", "status", "llama3.2:1b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("llama3.2:1b\n") and two_nodes.nodes[0].address in out
    assert run(["models", "status", "llama3.2:1b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"] == [two_nodes.nodes[0].address]
    assert run(["models", "status", "absent:1b"]) == 1
    assert "model 'absent:1b' not found" in capsys.readouterr().err
    assert run(["models", "status", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_models_pull_plain_lines_and_json(two_nodes, capsys):
    c = two_nodes
    target = c.nodes[1].address
    assert run(["models", "pull", "qwen3:0.6b", "--node", target, "--url", c.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "pulled qwen3:0.6b"
    assert any(line.startswith(f"{target}: pulling ") and line.endswith("100%")
               for line in out)
    assert "qwen3:0.6b" in c.nodes[1].models()
    assert run(["models", "pull", "all-minilm", "--url", c.url, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["status"] == "success"
    assert run(["models", "pull", "no-such:1b", "--url", c.url]) == 1
    assert "file does not exist" in capsys.readouterr().err


def test_models_rm_refuses_last_copy_then_forces(two_nodes, capsys):
    c = two_nodes
    assert run(["models", "rm", "llama3.2:1b", "--url", c.url]) == 1
    assert "--force" in capsys.readouterr().err
    assert "llama3.2:1b" in c.nodes[0].models()
    assert run(["models", "rm", "llama3.2:1b", "--force", "--url", c.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["results"] == {c.nodes[0].address: {"status": "deleted"}}
    assert run(["models", "rm", "nomic-embed-text", "--force", "--url", c.url,
                "--node", c.nodes[0].address]) == 0
    assert capsys.readouterr().out.strip() == f"{c.nodes[0].address}: deleted"


def test_models_optimize(capsys):
    with running_cluster([("llama3.2:1b", 100.0), ("", 50.0)], copies=2) as c:
        assert run(["models", "optimize", "--url", c.url]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].split() == ["ACTION", "MODEL", "NODE", "REASON"]
        assert f"add     llama3.2:1b  {c.nodes[1].address}" in out
        assert "--apply" in out
        assert "llama3.2:1b" not in c.nodes[1].models()
        assert run(["models", "optimize", "--apply", "--url", c.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["results"]["done"] == 1
        assert "llama3.2:1b" in c.nodes[1].models()


def test_jobs_ls_human_and_json(capsys):
    jobs = MaintenanceJobs(None)
    with running_cluster([("llama3.2:1b", 10.0)], maintenance=jobs) as c:
        jobs.add("queue-cleanup", lambda: 0, 300)

        def broken() -> None:
            raise RuntimeError("no disk")

        jobs.add("broken", broken, 60)
        jobs.run_now("broken")
        jobs.run_now("queue-cleanup")
        assert run(["maintenance", "ls", "--url", c.url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:2] == ["JOB", "EVERY"]
        broken_row = next(line for line in lines if line.startswith("broken "))
        assert "error: no disk" in broken_row and " 60s " in broken_row
        ok_row = next(line for line in lines if line.startswith("queue-cleanup "))
        assert " ok " in ok_row
        assert run(["maintenance", "ls", "--url", c.url, "--json"]) == 0
        data = {j["id"]: j for j in json.loads(capsys.readouterr().out)}
        assert data["broken"]["failures"] == 1 and data["queue-cleanup"]["runs"] == 1


def test_maintenance_run_runs_a_job_now_and_says_how_it_went(capsys):
    jobs = MaintenanceJobs(None)
    ran = []
    with running_cluster([("llama3.2:1b", 10.0)], maintenance=jobs) as c:
        jobs.add("queue-cleanup", lambda: ran.append(1) or 3, 300)

        def broken() -> None:
            raise RuntimeError("no disk")

        jobs.add("broken", broken, 60)
        assert run(["maintenance", "run", "queue-cleanup", "--url", c.url]) == 0
        assert ran == [1]
        out = capsys.readouterr().out
        assert out.splitlines()[1].startswith("queue-cleanup ") and " ok " in out
        assert run(["maintenance", "run", "broken", "--url", c.url, "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["error"].endswith("no disk")
        assert run(["maintenance", "run", "nope", "--url", c.url]) == 1
        err = capsys.readouterr().err
        assert "no maintenance job named 'nope'" in err and "Traceback" not in err


def test_unreachable_proxy_and_admin_key(capsys, monkeypatch):
    assert run(["models", "ls", "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "cannot reach the olol proxy" in capsys.readouterr().err
    with running_cluster([("llama3.2:1b", 10.0)], keys_enabled=True) as c:
        _, user = c.ctx.keys.create("user")
        _, admin = c.ctx.keys.create("ops", admin=True)
        monkeypatch.setenv("OLOL_API_KEY", user)
        assert run(["maintenance", "ls", "--url", c.url]) == 1
        assert "admin API key" in capsys.readouterr().err
        monkeypatch.setenv("OLOL_API_KEY", admin)
        assert run(["models", "ls", "--url", c.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["name"] == "llama3.2:1b"


def test_progress_view_draws_one_bar_per_node_in_a_terminal():
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.feed({"status": "pulling manifest", "nodes": ["a:1", "b:2"]})
    view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100, "completed": 50,
               "node": "a:1"})
    view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100, "node": "b:2"})
    view.feed({"status": "node succeeded", "node": "a:1"})
    text = out.getvalue()
    assert "\x1b[" in text  # redrawn in place
    last_frame = text.rsplit("\x1b[3A", 1)[-1]
    assert "a:1" in last_frame and "b:2" in last_frame
    assert "] 100%" not in last_frame.split("b:2")[1]
    assert " 50%" in last_frame and "node succeeded" in last_frame


def test_cli_main_dispatches_to_models_commands(two_nodes, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["olol.cli.models"])
    assert cli.main(["maintenance", "ls", "--url", two_nodes.url]) == 0
    assert capsys.readouterr().out.strip() == "no maintenance jobs"
    with pytest.raises(SystemExit):
        cli.main(["models", "pull"])  # NAME is required


def test_progress_view_shows_speed_eta_and_a_cluster_row_that_moves():
    now = [100.0]
    out = io.StringIO()
    view = ProgressView(out, tty=True, clock=lambda: now[0])
    view.feed({"status": "pulling manifest", "nodes": ["a:1", "b:2"]})
    for step in range(5):
        now[0] += 1.0
        for node in ("a:1", "b:2"):
            view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100_000_000,
                       "completed": step * 10_000_000, "node": node})
    frame = out.getvalue().rsplit("\x1b[3A", 1)[-1]
    a_line = next(line for line in frame.splitlines() if "a:1" in line)
    assert "/s, " in a_line and " left" in a_line  # 10 MB/s, 6 s left
    assert "6s left" in a_line
    cluster = next(line for line in frame.splitlines() if "cluster" in line)
    assert "pulling on 2 node(s), 0 done" in cluster and " 40%" in cluster
    view.feed({"status": "node succeeded", "node": "a:1"})
    frame = out.getvalue().rsplit("\x1b[3A", 1)[-1]
    assert "1 done" in next(line for line in frame.splitlines() if "cluster" in line)
