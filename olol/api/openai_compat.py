"""The OpenAI-compatible surface (``/v1``), translated the way Ollama's own layer does.

Requests are turned into native Ollama bodies (which then go through the normal queue),
and native answers back into OpenAI objects (OLLAMA-API.md §10). Streams are translated
record by record with :class:`ChatStreamTranslator` / :class:`CompletionStreamTranslator`
and framed as server-sent events with :func:`sse_event` and :data:`SSE_DONE`.

Errors are :class:`~olol.api.errors.ApiError`; render them with ``openai_body()``.

Deliberate differences from Ollama:

* ``max_completion_tokens`` is honoured (as ``num_predict``, when ``max_tokens`` is
  absent); Ollama silently ignores it (ollama/ollama#7125), so the openai SDK's newer
  parameter would not limit output there.
* ``tool_choice: "none"`` drops the tools; other ``tool_choice`` values are ignored.
* A missing ``model`` is a 400 ``model is required`` on all three POST routes.
* An empty embedding list answers ``data: []`` (Ollama: ``null``).

The code lives in :mod:`olol.api.openai_requests` (OpenAI bodies → native bodies) and
:mod:`olol.api.openai_responses` (native answers → OpenAI objects, SSE framing); this
module is the single import point for both.
"""

from olol.api.openai_requests import (
    chat_completion_to_ollama,
    completion_to_ollama,
    embedding_encoding_format,
    embeddings_to_ollama,
    include_usage,
    wants_stream,
)
from olol.api.openai_responses import (
    SSE_CONTENT_TYPE,
    SSE_DONE,
    SYSTEM_FINGERPRINT,
    ChatStreamTranslator,
    CompletionStreamTranslator,
    floats_to_base64,
    ollama_chat_chunk_to_openai,
    ollama_chat_to_openai,
    ollama_embed_to_openai,
    ollama_generate_chunk_to_openai,
    ollama_generate_to_openai,
    ollama_model_to_openai,
    ollama_show_to_openai_model,
    ollama_tags_to_openai_models,
    openai_stream_error_event,
    parse_ollama_time,
    sse_event,
)

__all__ = [
    "SSE_CONTENT_TYPE",
    "SSE_DONE",
    "SYSTEM_FINGERPRINT",
    "ChatStreamTranslator",
    "CompletionStreamTranslator",
    "chat_completion_to_ollama",
    "completion_to_ollama",
    "embedding_encoding_format",
    "embeddings_to_ollama",
    "floats_to_base64",
    "include_usage",
    "ollama_chat_chunk_to_openai",
    "ollama_chat_to_openai",
    "ollama_embed_to_openai",
    "ollama_generate_chunk_to_openai",
    "ollama_generate_to_openai",
    "ollama_model_to_openai",
    "ollama_show_to_openai_model",
    "ollama_tags_to_openai_models",
    "openai_stream_error_event",
    "parse_ollama_time",
    "sse_event",
    "wants_stream",
]
