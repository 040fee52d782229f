"""Fuzz every route of the Ollama API (``/api``), the OpenAI API (``/v1``) and olol's API
(``/olol/v1``) of a live proxy (issue 9: nothing a client sends can take the proxy down
or get a 500).

Routes are read from the app's url_map, so a new route is fuzzed without a change here.
Each request is drawn by hypothesis (:mod:`tests.fuzz.strategies`) and must get:

* no HTTP 500 (but what ``harness.KNOWN_500`` lists: nothing now); any other 4xx/5xx with a body in the API's own shape
  (``{"error": "..."}``, ``{"error": {"message": ...}}`` under ``/v1``; the router's
  plain-text 404/405 as gin answers them; the readiness probe's own documented 503 body),
  502/503/504 included;
* its whole answer within :data:`~tests.fuzz.harness.ANSWER_BOUND_S`;
* no unexpected exception in the proxy's log.

Afterwards the proxy must still answer ``/api/chat`` and ``/olol/v1/health`` with 200.

Budget: ``OLOL_FUZZ_EXAMPLES`` examples per route (default 30, about 1,700 requests in
under 20 s here) for the default run; ``test_fuzz_slow.py`` runs many more under
``-m slow``. No route is left out: destructive requests (deleting a model or a node,
adding junk nodes, optimize with apply) may do their damage and the harness repairs it
after each request (:func:`~tests.fuzz.harness.repair`). The one route that could lock
the suite out, ``DELETE /olol/v1/keys/<key_id>``, needs a key's id, which the fuzzer
cannot guess (and the last admin key cannot be revoked anyway); olol has no route that
deletes keys or data wholesale.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import harness
from tests.fuzz.harness import api_routes, build_url_map_app, exercise
from tests.fuzz.strategies import plans

ROUTES = api_routes(build_url_map_app())
EXAMPLES = int(os.environ.get("OLOL_FUZZ_EXAMPLES", "30"))
#: Shrinking a failure re-sends hundreds of requests (minutes when each one waits for a
#: bound): off unless asked for; the failure message has the exact request anyway.
SHRINK = os.environ.get("OLOL_FUZZ_SHRINK", "") not in ("", "0")

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis folder in the work tree; failures print their example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
    phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else []),
    report_multiple_bugs=False,
)


@pytest.mark.parametrize("route", ROUTES, ids=[r.id for r in ROUTES])
@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzzed_request_gets_no_500(fuzz_env, route, data):
    exercise(fuzz_env, route, data.draw(plans(route), label="request"))


def test_every_api_route_is_fuzzed():
    rules = {r.rule for r in ROUTES}
    assert {"/api/chat", "/v1/chat/completions", "/olol/v1/jobs"} <= rules
    assert all(r.rule.startswith(harness.API_PREFIXES) for r in ROUTES)


def test_proxy_still_serves_after_fuzzing(fuzz_env):
    check_still_serving(fuzz_env)


def check_still_serving(env) -> None:
    """Both proxies answer a normal chat and the health probe with 200, and the proxy
    logged no unexpected exception during the whole run."""
    import requests

    from tests.fuzz.strategies import valid_chat_body
    from tests.support import wait_until

    harness.repair(env)
    for live in env.proxies:
        headers = {"Authorization": f"Bearer {live.admin_key}"} if live.admin_key else {}
        health = requests.get(live.url + "/olol/v1/health", timeout=10)
        assert health.status_code == 200, (live.name, health.text)
        answers = []

        def chat_ok(live=live, headers=headers, answers=answers) -> bool:
            resp = requests.post(live.url + "/api/chat", json=valid_chat_body(),
                                 headers=headers, timeout=10)
            answers.append((resp.status_code, resp.text[:300]))
            return resp.status_code == 200

        assert wait_until(chat_ok, timeout=15, step=0.5), (live.name, answers[-3:])
        assert answers[-1][0] == 200
    crashes = harness.unexpected_errors(env.errors.records)
    assert not crashes, "\n\n".join(crashes[:5])
