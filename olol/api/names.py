"""Model names, parsed and compared the way Ollama does.

A name is ``[host/][namespace/]model[:tag]``; missing parts default to
``registry.ollama.ai``, ``library`` and ``latest``. Two names refer to the same model
when their filled-in forms are equal ignoring ASCII case — never by prefix or substring,
so ``llama3.2`` is not ``llama3``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

#: Ollama rejects a whole name longer than this.
MAX_NAME_LEN = 128

# Characters Ollama allows per part (types/model/name.go, isValidPart): a letter, digit
# or '_' first, then letters, digits, '_', '-', '.'; namespaces may not contain '.'.
# We additionally allow ':port' in the host part (a private registry on a port), which
# Ollama's older path parser accepted. So "." or "x/y/." are not names.
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(:[0-9]+)?")


class InvalidModelName(ValueError):
    """The string is not a valid model name."""


@dataclass(frozen=True)
class ModelName:
    """A parsed model name with defaults filled in; case is preserved as given."""

    host: str
    namespace: str
    model: str
    tag: str

    def full(self) -> str:
        """``host/namespace/model:tag`` (e.g. ``registry.ollama.ai/library/llama3:latest``)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def short(self) -> str:
        """The shortest display form, as ``/api/tags`` shows it (``llama3:latest``,
        ``user/m:7b``, ``example.com/ns/m:latest``)."""
        if self.host.lower() != DEFAULT_HOST:
            return self.full()
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def key(self) -> str:
        """Case-folded full form: equal keys mean the same model."""
        return self.full().lower()


def parse_model_name(name: str) -> ModelName:
    """Parse ``name`` and fill in the defaults.

    :raises InvalidModelName: when a part is empty, has a forbidden character, there are
        more than three ``/``-separated parts, there are consecutive dots, or the name
        is longer than :data:`MAX_NAME_LEN`.
    """
    if not isinstance(name, str):
        raise InvalidModelName("model name must be a string")
    s = name
    for scheme in ("http://", "https://"):
        if s.startswith(scheme):
            s = s[len(scheme) :]
            break
    if not s or len(s) > MAX_NAME_LEN or ".." in s:
        raise InvalidModelName(name)
    segments = s.split("/")
    if len(segments) > 3:
        raise InvalidModelName(name)
    last = segments[-1]
    model, sep, tag = last.partition(":")
    if sep and not tag:
        raise InvalidModelName(name)
    host = namespace = ""
    if len(segments) == 3:
        host, namespace = segments[0], segments[1]
    elif len(segments) == 2:
        namespace = segments[0]
    if not _MODEL_RE.fullmatch(model):
        raise InvalidModelName(name)
    if sep and not _TAG_RE.fullmatch(tag):
        raise InvalidModelName(name)
    if len(segments) >= 2 and not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidModelName(name)
    if len(segments) == 3 and not _HOST_RE.fullmatch(host):
        raise InvalidModelName(name)
    return ModelName(
        host=host or DEFAULT_HOST,
        namespace=namespace or DEFAULT_NAMESPACE,
        model=model,
        tag=tag or DEFAULT_TAG,
    )


def is_valid_model_name(name: object) -> bool:
    """Whether ``name`` parses as a model name."""
    try:
        parse_model_name(name)  # type: ignore[arg-type]
    except InvalidModelName:
        return False
    return True


def normalize_model_name(name: str) -> str:
    """The canonical short form used as a key across olol (lower-cased).

    ``Llama3``, ``llama3:latest``, ``library/llama3`` and
    ``registry.ollama.ai/library/llama3:latest`` all give ``llama3:latest``.

    :raises InvalidModelName: as :func:`parse_model_name`.
    """
    return parse_model_name(name).short().lower()


def model_matches(requested: str, available: str) -> bool:
    """Whether ``requested`` names the model ``available``: equal after filling in the
    defaults, ignoring case. Invalid names match nothing."""
    try:
        return parse_model_name(requested).key() == parse_model_name(available).key()
    except InvalidModelName:
        return False


def find_model(requested: str, available: list[str] | tuple[str, ...]) -> str | None:
    """The first entry of ``available`` that ``requested`` names, or ``None``."""
    for candidate in available:
        if model_matches(requested, candidate):
            return candidate
    return None
