"""The OpenAPI 3.1 document of olol's own API (``olol/server/openapi.json``, served at
``GET /olol/v1/openapi.json``): it lists exactly the app's ``/olol/v1`` routes and
methods, it is valid, it is served, and (slow) a live proxy conforms to it under
schemathesis."""

from __future__ import annotations

import json
import os
import re
from importlib import resources

import pytest
import requests

from tests.fuzz import harness

DOC = json.loads(resources.files("olol.server").joinpath("openapi.json").read_text("utf-8"))
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PREFIX = "/olol/v1"


def _template(rule: str) -> str:
    """werkzeug ``<conv:name>`` to OpenAPI ``{name}``."""
    return re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule)


def app_operations() -> set[tuple[str, str]]:
    """(OpenAPI path, METHOD) of every /olol/v1 rule; OPTIONS is Flask's own, HEAD is
    answered (and documented) wherever GET is."""
    app = harness.build_url_map_app()
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.rule == PREFIX or rule.rule.startswith(PREFIX + "/"):
            for method in rule.methods - {"OPTIONS"}:
                out.add((_template(rule.rule), method))
    return out


def doc_operations() -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in DOC["paths"].items()
            for method in item if method in HTTP_METHODS}


def test_the_document_lists_exactly_the_apps_olol_routes_and_methods():
    app, doc = app_operations(), doc_operations()
    assert app - doc == set(), "routes of the app missing from openapi.json"
    assert doc - app == set(), "operations in openapi.json that the app does not have"


def test_path_parameters_match_the_templates():
    for path, item in DOC["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (path, method)


def test_operation_ids_are_unique_and_only_the_probes_need_no_key():
    from olol.server import app as app_module

    ids = [op["operationId"] for item in DOC["paths"].values()
           for method, op in item.items() if method in HTTP_METHODS]
    assert len(ids) == len(set(ids))
    public = set()
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            if op.get("security") == []:
                public.add(path)
            else:
                assert "401" in op["responses"], (path, method)
    assert public == {p for p in app_module.PUBLIC_PATHS if p.startswith(PREFIX)}


def test_the_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.validator_for(definitions.OPENAPI_31)
    errors = [str(e) for e in validator.iter_errors(DOC)]
    assert errors == []
    import schemathesis

    schema = schemathesis.openapi.from_dict(DOC)  # every $ref resolves
    labels = {op.ok().label for op in schema.get_all_operations()}
    assert labels == {f"{m} {p}" for p, m in doc_operations()}


def test_the_document_is_served_as_packaged(fuzz_env):
    open_proxy, keyed = fuzz_env.proxy("open"), fuzz_env.proxy("keyed")
    resp = requests.get(open_proxy.url + "/olol/v1/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == DOC
    assert requests.get(keyed.url + "/olol/v1/openapi.json", timeout=10).status_code == 401
    resp = requests.get(keyed.url + "/olol/v1/openapi.json", timeout=10,
                        headers={"Authorization": f"Bearer {keyed.user_key}"})
    assert resp.status_code == 200 and resp.json() == DOC


# -- schemathesis against a live proxy (slow) --------------------------------------------

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402
from schemathesis.specs.openapi import checks as oa_checks  # noqa: E402

SCHEMA = schemathesis.openapi.from_dict(DOC)
SCHEMATHESIS_EXAMPLES = int(os.environ.get("OLOL_SCHEMATHESIS_EXAMPLES", "150"))

#: Checks run on every response. Left out: ``not_a_server_error`` (replaced by
#: ``no_unexpected_server_error`` below, which tolerates the documented pull 500 that
#: harness.KNOWN_500 lists (none now), and 502/503/504 with an error body);
#: ``use_after_free`` and ``ensure_resource_availability`` (stateful checks that need
#: OpenAPI links, which the document has none of); ``positive_data_acceptance`` (valid
#: data for an id that does not exist is rightly a 404/409, e.g. a random job id).
CHECKS = [
    st_checks.not_a_server_error,
    oa_checks.status_code_conformance,
    oa_checks.content_type_conformance,
    oa_checks.response_headers_conformance,
    oa_checks.response_schema_conformance,
    oa_checks.negative_data_rejection,
    oa_checks.ignored_auth,
    oa_checks.unsupported_method,
    oa_checks.missing_required_header,
]


def no_unexpected_server_error(ctx, response, case):
    """No 500 but the documented (known) failed-pull one; any 5xx has an error body."""
    status = response.status_code
    if status < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        raise AssertionError(f"{status} without an error body: {response.text[:300]!r}")
    if status == 500 and not (case.operation.path == "/olol/v1/models/pull"
                              and body["error"] != "internal error"):
        raise AssertionError(f"HTTP 500: {body['error']}")
    return None


@pytest.mark.slow
@pytest.mark.timeout(1800)
@SCHEMA.parametrize()
@settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_a_live_proxy_conforms_to_its_openapi_document(case, fuzz_env):
    live = fuzz_env.proxy("keyed")
    headers = {"Authorization": f"Bearer {live.admin_key}"}
    mark = fuzz_env.errors.mark()
    response = case.call(base_url=live.url, headers=headers, timeout=harness.ANSWER_BOUND_S)
    elapsed = float(response.elapsed)
    fuzz_env.recorder.add("schemathesis " + case.operation.label,
                          harness.Answer(response.status_code, {}, b"", elapsed))
    try:
        case.validate_response(response, checks=CHECKS[1:], headers=headers,
                               additional_checks=[no_unexpected_server_error])
        assert elapsed <= harness.ANSWER_BOUND_S, f"answered in {elapsed:.1f} s"
        crashes = harness.unexpected_errors(fuzz_env.errors.since(mark))
        assert not crashes, "\n".join(crashes)
    finally:
        harness.repair(fuzz_env)


@pytest.mark.slow
def test_proxy_still_serves_after_schemathesis(fuzz_env):
    from tests.fuzz.test_fuzz_routes import check_still_serving

    check_still_serving(fuzz_env)
