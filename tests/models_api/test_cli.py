"""``olol models ...`` and ``olol maintenance ls|run`` against a live front door."""

from __future__ import annotations

import argparse
import io
import json
import re

import pytest

from olol import cli
from olol.cli.models import ProgressView, register
from olol.cli.progress import Waiting
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


def last_frame(text: str) -> str:
    """What the terminal shows at the end: the last frame rich drew, without colours."""
    frame = re.split(r"\r(?:\x1b\[2K\x1b\[1A)*\x1b\[2K", text)[-1]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame)


def row_of(frame: str, name: str) -> str:
    return next(line for line in frame.splitlines() if line.startswith(name + " "))


def test_progress_view_draws_one_bar_per_node_in_a_terminal():
    out = io.StringIO()
    view = ProgressView(out, tty=True, width=160)
    view.feed({"status": "pulling manifest", "nodes": ["a:1", "[::1]:2"]})
    view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100, "completed": 50,
               "node": "a:1", "node_completed": 50, "node_total": 100})
    view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100, "node": "[::1]:2",
               "node_completed": 0, "node_total": 100})
    view.feed({"status": "node succeeded", "node": "a:1", "node_completed": 100,
               "node_total": 100})
    view.close()
    text = out.getvalue()
    assert "\x1b[1A" in text  # redrawn in place
    frame = last_frame(text)
    assert [line.split()[0] for line in frame.splitlines() if line.strip()] == [
        "cluster", "a:1", "[::1]:2"]  # brackets shown as they are, not taken as markup
    assert " 100% " in row_of(frame, "a:1") and "node succeeded" in row_of(frame, "a:1")
    assert "  0% " in row_of(frame, "[::1]:2")
    assert "1 done" in row_of(frame, "cluster")


def test_progress_view_shows_bytes_speed_eta_and_a_cluster_row_that_moves():
    now = [100.0]
    out = io.StringIO()
    view = ProgressView(out, tty=True, clock=lambda: now[0], width=160)
    view.feed({"status": "pulling manifest", "nodes": ["a:1", "b:2"]})
    for step in range(5):
        now[0] += 1.0
        for node in ("a:1", "b:2"):
            done = step * 10_000_000
            view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100_000_000,
                       "completed": done, "node": node, "node_completed": done,
                       "node_total": 100_000_000, "cluster_completed": 2 * done,
                       "cluster_total": 200_000_000})
    frame = last_frame(out.getvalue())
    a_row = row_of(frame, "a:1")
    assert "40.0/100.0 MB" in a_row and "10.0 MB/s" in a_row  # 10 MB a second
    assert "0:00:06" in a_row  # 60 MB left at 10 MB/s
    cluster = row_of(frame, "cluster")
    assert "pulling on 2 node(s), 0 done" in cluster and " 40% " in cluster
    assert "80.0/200.0 MB" in cluster and "20.0 MB/s" in cluster
    view.feed({"status": "node succeeded", "node": "a:1", "node_completed": 100_000_000,
               "node_total": 100_000_000})
    view.close()
    assert "1 done" in row_of(last_frame(out.getvalue()), "cluster")


def test_progress_view_prints_plain_lines_without_escape_codes_elsewhere():
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    view.feed({"status": "pulling manifest", "nodes": ["a:1"]})
    for done in range(0, 101, 5):
        view.feed({"status": "pulling abc", "digest": "sha256:x", "total": 100,
                   "completed": done, "node": "a:1", "node_completed": done,
                   "node_total": 100})
    view.feed({"status": "node failed", "node": "a:1", "node_error": "disk full"})
    view.close()
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[0] == "cluster: pulling on 1 node(s), 0 done"
    assert [line for line in lines if line.startswith("a:1: pulling abc")] == [
        f"a:1: pulling abc {p}%" for p in range(0, 101, 10)]  # one line per 10 %
    assert "cluster: pulling on 1 node(s), 0 done 50%" in lines  # the cluster moves too
    assert lines[-2:] == ["a:1: failed: disk full 100%",
                          "cluster: pulling on 1 node(s), 0 done, 1 failed 100%"]


def test_waiting_line_plain_and_in_a_terminal():
    out = io.StringIO()
    with Waiting(out, tty=False) as waiting:
        for state in ("pending", "pending", "processing"):
            waiting.show(f"job 1: {state}")
    assert out.getvalue() == "job 1: pending\njob 1: processing\n"
    out = io.StringIO()
    now = [0.0]
    with Waiting(out, tty=True, clock=lambda: now[0]) as waiting:
        waiting.show("job 1: pending")
        now[0] = 65.0
        waiting.tick()
        assert "job 1: pending" in last_frame(out.getvalue())
        assert "0:01:05" in last_frame(out.getvalue())
    text = out.getvalue()
    assert "\x1b[?25h" in text  # the cursor is given back
    assert text.endswith("\x1b[2K")  # and the line is wiped: the result comes next


def test_cli_main_dispatches_to_models_commands(two_nodes, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["olol.cli.models"])
    assert cli.main(["maintenance", "ls", "--url", two_nodes.url]) == 0
    assert capsys.readouterr().out.strip() == "no maintenance jobs"
    with pytest.raises(SystemExit):
        cli.main(["models", "pull"])  # NAME is required
