"""Errors in the shapes Ollama answers them, with its exact wordings.

Native endpoints answer ``{"error": "<message>"}``; the ``/v1`` layer answers
``{"error": {"message", "type", "param", "code"}}`` where ``type`` follows the
status (OLLAMA-API.md §1.1 and §10.5), and the Anthropic-compatible ``/v1/messages``
answers ``{"type": "error", "error": {"type", "message"}}`` (``overloaded_error`` for
503/529, as Ollama's ``anthropic.NewError``). Handlers raise :class:`ApiError` and the
blueprint renders it with :meth:`ApiError.ollama_body`, :meth:`ApiError.openai_body`
or :meth:`ApiError.anthropic_body`.
"""

from __future__ import annotations

from typing import Any

#: Ollama's scheduler queue-full message (two spaces before "maximum", as in sched.go).
SERVER_BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class ApiError(Exception):
    """A client-visible error: an HTTP status and a message in Ollama's words.

    :param status: HTTP status code.
    :param message: the message, exactly as Ollama would word it.
    :param openai_type: overrides the OpenAI ``type`` derived from the status.
    :param code: the OpenAI ``code`` field (``None`` in everything Ollama emits).
    :param headers: extra response headers (e.g. ``Retry-After`` on a 503).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        openai_type: str | None = None,
        code: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.openai_type = openai_type
        self.code = code
        self.headers = dict(headers or {})

    def ollama_body(self) -> dict[str, str]:
        """The native body, ``{"error": message}``."""
        return ollama_error_body(self.message)

    def openai_body(self) -> dict[str, Any]:
        """The ``/v1`` body for this error."""
        return openai_error_body(self.status, self.message, type=self.openai_type, code=self.code)

    def anthropic_body(self) -> dict[str, Any]:
        """The Anthropic Messages API body for this error."""
        return anthropic_error_body(self.status, self.message)

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r})"


def ollama_error_body(message: str) -> dict[str, str]:
    """The native error body: a JSON object whose ``error`` is a string."""
    return {"error": str(message)}


def openai_error_type(status: int) -> str:
    """OpenAI error ``type`` for a status, as Ollama's ``openai.NewError`` picks it."""
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def openai_error_body(
    status: int,
    message: str,
    type: str | None = None,  # mirrors the OpenAI field name
    code: Any = None,
    param: Any = None,
) -> dict[str, Any]:
    """The ``/v1`` error body; ``param`` and ``code`` are serialised as null when unset."""
    return {
        "error": {
            "message": str(message),
            "type": type or openai_error_type(status),
            "param": param,
            "code": code,
        }
    }


def anthropic_error_type(status: int) -> str:
    """Anthropic error ``type`` for a status, as Ollama's ``anthropic.NewError`` picks it
    (plus ``request_too_large`` for 413, the type Anthropic's own API uses)."""
    return _ANTHROPIC_TYPES.get(int(status), "api_error")


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": str(message)},
    }


# --- exact-message helpers -------------------------------------------------------------
#
# Ollama words "model not found" four ways depending on the endpoint; the helpers below
# take the endpoint name so callers never have to remember which.

_NOT_FOUND_SINGLE_QUOTES = frozenset({"generate", "chat", "show", "delete", "completions",
                                      "passthrough"})
_NOT_FOUND_TRY_PULLING = frozenset({"embed", "embeddings"})


def model_not_found(endpoint: str, model: str) -> ApiError:
    """404 for an unknown model, worded as ``endpoint`` words it.

    ``generate``/``chat``/``show``/``delete`` (and the /v1 routes that reach them):
    ``model 'x' not found``; ``embed``/``embeddings``: ``model "x" not found, try pulling
    it first``; ``copy``: ``model "x" not found``.
    """
    if endpoint in _NOT_FOUND_TRY_PULLING:
        return ApiError(404, f'model "{model}" not found, try pulling it first')
    if endpoint == "copy":
        return ApiError(404, f'model "{model}" not found')
    if endpoint in _NOT_FOUND_SINGLE_QUOTES or endpoint.startswith("v1"):
        return ApiError(404, f"model '{model}' not found")
    raise ValueError(f"no model-not-found wording for endpoint {endpoint!r}")


def blob_not_found(digest: str) -> ApiError:
    """404 for ``HEAD /api/blobs/<digest>`` of a missing blob."""
    return ApiError(404, f'blob "{digest}" not found')


def model_required() -> ApiError:
    """400 ``model is required`` (chat, show, push, embeddings, pull, create)."""
    return ApiError(400, "model is required")


def missing_request_body() -> ApiError:
    """400 for an empty body (Go's io.EOF in the handler)."""
    return ApiError(400, "missing request body")


def server_busy(retry_after_s: int | None = None) -> ApiError:
    """503 when the queue is full, worded as Ollama's ``ErrMaxQueue``."""
    headers = {"Retry-After": str(int(retry_after_s))} if retry_after_s is not None else None
    return ApiError(503, SERVER_BUSY_MESSAGE, headers=headers)


def model_unreachable(model: str, retry_after_s: int) -> ApiError:
    """503 when the model is known but every node that has it is down for now."""
    return ApiError(
        503, f'model "{model}" is on no reachable node right now; try again later',
        headers={"Retry-After": str(int(retry_after_s))},
    )


def invalid_model_name() -> ApiError:
    """400 ``invalid model name`` (pull, create, show…)."""
    return ApiError(400, "invalid model name")


def invalid_source_name(name: str) -> ApiError:
    """400 for ``/api/copy`` with an unparseable source."""
    return ApiError(400, f'source "{name}" is invalid')


def invalid_destination_name(name: str) -> ApiError:
    """400 for ``/api/copy`` with an unparseable destination."""
    return ApiError(400, f'destination "{name}" is invalid')


def invalid_delete_name(name: str) -> ApiError:
    """400 for ``/api/delete`` with an unparseable name."""
    return ApiError(400, f'name "{name}" is invalid')


def does_not_support(model: str, capability: str) -> ApiError:
    """400 ``"x" does not support generate|chat|thinking|insert``."""
    return ApiError(400, f'"{model}" does not support {capability}')


def does_not_support_tools(full_name: str) -> ApiError:
    """400 for tools on a model without the capability; Ollama names the *full* model name
    (``registry.ollama.ai/library/x:latest``)."""
    return ApiError(400, f"{full_name} does not support tools")


def request_canceled() -> ApiError:
    """499 when the client went away while waiting for a runner."""
    return ApiError(499, "request canceled")


def raw_mode_conflict() -> ApiError:
    """400 for ``raw`` combined with ``template``, ``system`` or ``context``."""
    return ApiError(400, "raw mode does not support template, system, or context")


def top_logprobs_out_of_range() -> ApiError:
    """400 for ``top_logprobs`` outside 0..20."""
    return ApiError(400, "top_logprobs must be between 0 and 20")


def invalid_input_type() -> ApiError:
    """400 for an ``/api/embed`` input that is neither a string nor a list of strings."""
    return ApiError(400, "invalid input type")


def body_too_large(limit: int) -> ApiError:
    """413 for a body over the configured limit (gin has no limit; this is the proxy's own)."""
    return ApiError(413, f"http: request body too large (limit {limit} bytes)")


#: What a node's failure message says about whose fault it is.
_NOT_FOUND_HINTS = ("file does not exist", "not found", "no such")
_BAD_INPUT_HINTS = ("invalid", "unknown", "unsupported", "must ", "required", "bad ")


def node_failure(message: str, status: int | None = None) -> ApiError:
    """A model-management operation that failed on its node(s), as the proxy answers it.

    Ollama answers many of these 500 (a pull of a model the registry does not have, a
    create from a bad name); the proxy does not pass a 500 on: a 4xx the node gave is
    kept, a message that says the request was at fault becomes 404 or 400, anything
    else is the node's failure, 502.
    """
    if status is not None and 400 <= status < 500:
        return ApiError(status, message)
    lower = message.lower()
    if any(hint in lower for hint in _NOT_FOUND_HINTS):
        return ApiError(404, message)
    if any(hint in lower for hint in _BAD_INPUT_HINTS):
        return ApiError(400, message)
    return ApiError(502, message)
