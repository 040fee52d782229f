"""``olol jobs``: asynchronous inference jobs through a live proxy (issue 13: the CLI's
``jobs`` listed maintenance jobs while the API's are inference jobs)."""

from __future__ import annotations

import json

from olol.cli import main


def test_submit_wait_get_ls_cancel(make_cluster, capsys, tmp_path):
    c = make_cluster(nodes=1)
    body = {"model": "llama3.2:1b", "prompt": "hello", "options": {"num_predict": 4}}
    assert main(["jobs", "submit", "generate", json.dumps(body), "--url", c.url]) == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 32
    assert main(["jobs", "wait", job_id, "--url", c.url, "--max-wait", "60", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["status"] == "completed" and done["result"]["response"]
    assert main(["jobs", "get", job_id, "--url", c.url]) == 0
    out = capsys.readouterr().out
    assert "status:   completed" in out and "result:" in out
    assert main(["jobs", "ls", "--url", c.url, "--status", "completed"]) == 0
    assert job_id in capsys.readouterr().out
    # a body from a file, a bad body, an unknown job
    (tmp_path / "chat.json").write_text(json.dumps(
        {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}))
    assert main(["jobs", "submit", "chat", f"@{tmp_path / 'chat.json'}", "--url", c.url]) == 0
    capsys.readouterr()
    assert main(["jobs", "submit", "chat", "{not json", "--url", c.url]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["jobs", "get", "nope", "--url", c.url]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["jobs", "cancel", job_id, "--url", c.url]) == 1
    assert "already finished" in capsys.readouterr().err
