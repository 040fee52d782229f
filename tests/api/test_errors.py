import pytest

from olol.api import errors
from olol.api.errors import ApiError, ollama_error_body, openai_error_body


def test_ollama_body_is_object_with_string_error():
    assert ollama_error_body("boom") == {"error": "boom"}
    assert ApiError(400, "bad").ollama_body() == {"error": "bad"}


@pytest.mark.parametrize(
    "status, etype",
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (500, "api_error"),
        (503, "api_error"),
        (413, "api_error"),
    ],
)
def test_openai_type_follows_status(status, etype):
    assert openai_error_body(status, "m") == {
        "error": {"message": "m", "type": etype, "param": None, "code": None}
    }


def test_openai_type_override_and_code():
    err = ApiError(429, "slow down", openai_type="rate_limit_error", code="rate_limited")
    assert err.openai_body()["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limited",
    }


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("generate", "model 'x' not found"),
        ("chat", "model 'x' not found"),
        ("show", "model 'x' not found"),
        ("delete", "model 'x' not found"),
        ("embed", 'model "x" not found, try pulling it first'),
        ("embeddings", 'model "x" not found, try pulling it first'),
        ("copy", 'model "x" not found'),
    ],
)
def test_model_not_found_wordings(endpoint, message):
    err = errors.model_not_found(endpoint, "x")
    assert (err.status, err.message) == (404, message)


def test_model_not_found_unknown_endpoint_is_a_programming_error():
    with pytest.raises(ValueError):
        errors.model_not_found("tags", "x")


def test_exact_messages():
    assert errors.server_busy().message == (
        "server busy, please try again.  maximum pending requests exceeded"
    )
    assert errors.server_busy().status == 503
    assert errors.server_busy(retry_after_s=2).headers == {"Retry-After": "2"}
    assert (errors.model_required().status, errors.model_required().message) == (
        400,
        "model is required",
    )
    assert errors.missing_request_body().message == "missing request body"
    assert errors.invalid_model_name().message == "invalid model name"
    assert errors.invalid_source_name("a b").message == 'source "a b" is invalid'
    assert errors.invalid_destination_name("").message == 'destination "" is invalid'
    assert errors.invalid_delete_name("a b").message == 'name "a b" is invalid'
    assert errors.does_not_support("m", "thinking").message == '"m" does not support thinking'
    assert (
        errors.does_not_support_tools("registry.ollama.ai/library/m:latest").message
        == "registry.ollama.ai/library/m:latest does not support tools"
    )
    assert (errors.request_canceled().status, errors.request_canceled().message) == (
        499,
        "request canceled",
    )
    assert errors.blob_not_found("sha256:ab").message == 'blob "sha256:ab" not found'
    assert errors.body_too_large(10).status == 413
