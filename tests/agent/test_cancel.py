"""Cancellation and deadlines reach the simulator: its generation stops."""

from __future__ import annotations

import grpc
import pytest

from olol.rpc.client import NodeError

from .conftest import wait_until

LONG = {"model": "llama3.2:1b", "prompt": "tell a long story", "options": {"num_predict": 2000}}


def test_cancel_stops_the_generation(slow_sim, slow_client):
    before = slow_sim.stats()["generations_cancelled"]
    stream = slow_client.generate(dict(LONG, stream=True))
    assert next(stream)["done"] is False
    assert slow_sim.stats()["active_generations"] >= 1
    stream.cancel()
    assert wait_until(lambda: slow_sim.stats()["generations_cancelled"] > before)
    assert wait_until(lambda: slow_sim.stats()["active_generations"] == 0)
    with pytest.raises(NodeError) as info:
        list(stream)
    assert info.value.code == grpc.StatusCode.CANCELLED


def test_deadline_stops_the_generation(slow_sim, slow_client):
    before = slow_sim.stats()["generations_cancelled"]
    with pytest.raises(NodeError) as info:
        list(slow_client.chat({"model": "llama3.2:1b", "stream": True,
                               "messages": [{"role": "user", "content": "x"}],
                               "options": {"num_predict": 2000}}, timeout=0.3))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.http_status == 504
    assert wait_until(lambda: slow_sim.stats()["generations_cancelled"] > before)


def test_in_flight_is_reported_while_generating(slow_sim, slow_client):
    with slow_client.generate(dict(LONG, stream=True)) as stream:
        next(stream)
        agent = slow_client.status()["agent"]
        assert agent["in_flight"] == {"llama3.2:1b": 1} and agent["in_flight_total"] == 1
    assert wait_until(lambda: slow_client.status()["agent"]["in_flight_total"] == 0)


def test_cancel_while_ollama_hangs_before_answering(slow_sim, slow_client):
    slow_sim.faults.hang_next(1)
    stream = slow_client.generate(dict(LONG, stream=True))
    assert wait_until(lambda: slow_sim.faults.hanging() == 1)
    stream.cancel()
    assert wait_until(lambda: slow_client.status()["agent"]["in_flight_total"] == 0)
