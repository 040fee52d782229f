"""The front door's collaborators: a frozen Services, built from a ProxyContext."""

from __future__ import annotations

import dataclasses

import pytest
import requests

from olol.context import Services
from olol.keys import KeyStore
from olol.server import create_app
from olol.server.common import EXTENSION
from tests.server.conftest import build_ctx, serve


def test_services_are_frozen_and_carry_the_context_parts():
    ctx = build_ctx([])
    ctx.keys = None
    try:
        services = ctx.services()
        assert isinstance(services, Services)
        assert services.queue is ctx.queue and services.cluster is ctx.cluster
        assert services.draining is ctx.draining  # shutdown is seen by both
        # a key store is made (and kept on the context) when there was none
        assert isinstance(services.keys, KeyStore) and ctx.keys is services.keys
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.registry = None  # type: ignore[misc]
    finally:
        ctx.db.close()


def test_create_app_freezes_a_context_and_keeps_services_as_given():
    ctx = build_ctx([])
    try:
        app = create_app(ctx)
        held = app.extensions[EXTENSION]
        assert isinstance(held, Services) and held.queue is ctx.queue
        services = ctx.services()
        assert create_app(services).extensions[EXTENSION] is services
    finally:
        ctx.db.close()


def test_readiness_names_a_draining_proxy_and_a_cluster_without_nodes():
    ctx = build_ctx([])
    try:
        services = ctx.services()
        assert services.readiness() == ["no node is configured (olol nodes add HOST:PORT)"]
        services.draining.set()
        assert services.readiness()[0] == "the proxy is shutting down"
    finally:
        ctx.db.close()


def test_config_route_without_runtime_settings_answers_503_not_500():
    with serve(build_ctx([])) as served:
        resp = requests.get(served.url + "/olol/v1/config", timeout=10)
        assert resp.status_code == 503
        assert "run-time settings" in resp.json()["error"]
