"""Model management and maintenance jobs through the real proxy."""

import json

import ollama
import requests

from olol.cli import main
from tests.e2e.conftest import wait_until


def test_pull_use_copy_delete_through_the_proxy(make_cluster):
    c = make_cluster(nodes=2)
    client = ollama.Client(host=c.url)
    progress = list(client.pull("qwen3:0.6b", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    # one copy by default, placed on one node, which lists it afterwards
    assert sum("qwen3:0.6b" in {m.model for m in ollama.Client(host=s.url).list().models}
               for s in c.sims) == 1
    assert wait_until(lambda: "qwen3:0.6b" in {m.model for m in client.list().models})
    reply = client.generate(model="qwen3:0.6b", prompt="hello", options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3
    client.copy("qwen3:0.6b", "my-qwen:latest")
    assert wait_until(lambda: "my-qwen:latest" in {m.model for m in client.list().models})
    client.delete("my-qwen")
    assert wait_until(lambda: "my-qwen:latest" not in {m.model for m in client.list().models})
    status = requests.get(c.url + "/olol/v1/models/qwen3:0.6b", timeout=10).json()
    holder = [s for s in c.sims
              if "qwen3:0.6b" in {m.model for m in ollama.Client(host=s.url).list().models}]
    holder_agent = c.agents[c.sims.index(holder[0])].address
    assert status["name"] == "qwen3:0.6b" and holder_agent in json.dumps(status)
    assert status.get("usage_count", 0) >= 1 or status.get("last_used")


def test_maintenance_jobs_are_listed_and_runnable(make_cluster, capsys):
    c = make_cluster(nodes=1)
    jobs = {j["id"]: j for j in requests.get(c.url + "/olol/v1/maintenance", timeout=10).json()["jobs"]}
    assert {"health-poll", "queue-cleanup", "registry-sync", "stats-rollup", "store-checkpoint"} <= set(jobs)
    assert main(["maintenance", "ls", "--url", c.url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"health-poll", "registry-sync"} <= {j["id"] for j in listed}
    ran = requests.post(c.url + "/olol/v1/maintenance/registry-sync/run", timeout=30)
    assert ran.status_code == 200
    again = {j["id"]: j for j in requests.get(c.url + "/olol/v1/maintenance", timeout=10)
             .json()["jobs"]}
    assert again["registry-sync"]["runs"] >= 1 and again["registry-sync"]["outcome"] == "ok"
    assert main(["models", "ls", "--url", c.url]) == 0
    assert "llama3.2:1b" in capsys.readouterr().out
