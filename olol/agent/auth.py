"""Bearer-token checks for the agent's gRPC server (a server interceptor).

With a token configured, every call must carry the metadata
``authorization: Bearer <token>``, except the standard health service. Model
commands (pull, push, create, copy, delete, blob upload, RemoteModelCommand)
can require a separate admin token; the admin token is also accepted wherever
the ordinary token is.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import grpc

SERVICE = "/olol.node.v1.NodeAgent/"
ADMIN_METHODS = frozenset(
    SERVICE + name
    for name in ("Pull", "Push", "Create", "Copy", "Delete", "UploadBlob", "RemoteModelCommand")
)
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


def _matches(supplied: str | None, expected: str | None) -> bool:
    if not supplied or not expected:
        return False
    return hmac.compare_digest(supplied.encode(), expected.encode())


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that refuses the call."""

    def refuse(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the right bearer token with UNAUTHENTICATED.

    :param token: required on every call (None: calls are open).
    :param admin_token: required on model commands (None: the ordinary rule applies).
    """

    def __init__(self, token: str | None = None, admin_token: str | None = None) -> None:
        self._token = token or None
        self._admin = admin_token or None

    def _allowed(self, method: str, supplied: str | None) -> tuple[bool, str]:
        if method in ADMIN_METHODS and self._admin:
            return _matches(supplied, self._admin), "admin token required"
        if self._token:
            ok = _matches(supplied, self._token) or _matches(supplied, self._admin)
            return ok, "missing or invalid bearer token"
        return True, ""

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        ok, message = self._allowed(method, _bearer(handler_call_details.invocation_metadata))
        if ok:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _denied(handler, message)
