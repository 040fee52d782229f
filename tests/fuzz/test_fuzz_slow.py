"""The long fuzz run (``make test-slow``): the same requests and rules as
``test_fuzz_routes.py`` with ``OLOL_FUZZ_SLOW_EXAMPLES`` examples per route (default
200: about ten thousand requests in all), then the same kind of requests sent in
concurrent batches (``OLOL_FUZZ_CONCURRENT_BATCHES``, default 100 batches of 8 to 24)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import exercise, exercise_together
from tests.fuzz.strategies import plans
from tests.fuzz.test_fuzz_routes import FUZZ_SETTINGS, ROUTES, check_still_serving

SLOW_EXAMPLES = int(os.environ.get("OLOL_FUZZ_SLOW_EXAMPLES", "200"))

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("route", ROUTES, ids=[r.id for r in ROUTES])
@settings(FUZZ_SETTINGS, max_examples=SLOW_EXAMPLES)
@given(data=st.data())
def test_many_fuzzed_requests_get_no_500(fuzz_env, route, data):
    exercise(fuzz_env, route, data.draw(plans(route), label="request"))


#: Batches of requests sent at once (each batch: 8 to 24 requests to any routes).
CONCURRENT_BATCHES = int(os.environ.get("OLOL_FUZZ_CONCURRENT_BATCHES", "100"))
ANY_ROUTE_PLAN = st.sampled_from(ROUTES).flatmap(
    lambda route: plans(route).map(lambda plan: (route, plan)))


@pytest.mark.timeout(1800)
@settings(FUZZ_SETTINGS, max_examples=CONCURRENT_BATCHES)
@given(batch=st.lists(ANY_ROUTE_PLAN, min_size=8, max_size=24))
def test_fuzzed_requests_sent_together_get_no_500(fuzz_env, batch):
    exercise_together(fuzz_env, batch)


def test_proxy_still_serves_after_the_long_run(fuzz_env):
    check_still_serving(fuzz_env)
