"""The OpenAPI 3.1 description of olol's own API (``/olol/v1``), served at
``GET /olol/v1/openapi.json``.

The document ships inside the package (``olol/server/openapi.json``) and is read once,
on the first request. It covers only olol's API: the Ollama and OpenAI-compatible
routes are described by those projects. When keys are enabled the document needs a
valid key, like every other route but the liveness probes.
"""

from __future__ import annotations

import threading
from importlib import resources

from flask import Blueprint, Response

from olol.api.streaming import JSON_CONTENT_TYPE

bp = Blueprint("openapi", __name__, url_prefix="/olol/v1")

DOCUMENT = "openapi.json"

_cache: list[bytes] = []
_lock = threading.Lock()


def document_bytes() -> bytes:
    """The packaged document, as stored (read once, then cached)."""
    with _lock:
        if not _cache:
            _cache.append(resources.files("olol.server").joinpath(DOCUMENT).read_bytes())
        return _cache[0]


@bp.route("/openapi.json", methods=["GET"])
def openapi_document() -> Response:
    return Response(document_bytes(), status=200, content_type=JSON_CONTENT_TYPE)
