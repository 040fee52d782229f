"""Deterministic fake model output: text tokens, JSON, tool calls and embeddings.

Everything is derived from a seed built from the model name, the prompt and
``options.seed`` (or ``temperature: 0``, greedy decoding); the same inputs always
give the same output, streamed or not. Like a real model, an answer is a
function of the text before it: asked to continue a prefix of its own answer
(a trailing assistant message), the simulator gives the rest of that answer
(:func:`strip_prefix`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import struct

_WORDS = (
    "the a model answer token cluster node request queue light river stone cloud "
    "signal garden window quiet bright simple result value system memory number "
    "forest ocean paper little green silver yellow early later around through under "
    "between every many some other first second final steady gentle rapid careful "
    "idea story question reason example pattern method process detail measure"
).split()

_THINK_WORDS = (
    "let me consider the request first then check each part carefully and answer "
    "briefly because the user wants a clear reply"
).split()


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def make_seed(model: str, prompt: str, seed: object, temperature: object = None) -> int:
    """A 64-bit seed. ``options.seed`` (non-negative) fixes it; without one,
    ``temperature: 0`` (greedy decoding, deterministic in Ollama too) fixes it as
    well; otherwise it is random."""
    if _number(seed) and seed >= 0:  # type: ignore[operator]
        material = f"{model.lower()}\x00{prompt}\x00{int(seed)}".encode()  # type: ignore[call-overload]
        return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")
    if _number(temperature) and temperature == 0:
        material = f"{model.lower()}\x00{prompt}\x00greedy".encode()
        return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")
    return int.from_bytes(os.urandom(8), "big")


def count_tokens(text: str) -> int:
    """A rough token count (words and punctuation), at least 1 for non-empty text."""
    if not text:
        return 0
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


def text_tokens(rng: random.Random, count: int) -> list[str]:
    """``count`` word tokens forming a sentence-like text (first token has no leading space)."""
    tokens: list[str] = []
    for i in range(count):
        word = rng.choice(_WORDS)
        if i == 0:
            tokens.append(word.capitalize())
        elif i == count - 1:
            tokens.append(" " + word + ".")
        else:
            tokens.append(" " + word)
    return tokens


def more_tokens(rng: random.Random, count: int) -> list[str]:
    """``count`` word tokens that carry on a text already begun (each with its
    leading space, the last one ends the sentence)."""
    tokens = [" " + rng.choice(_WORDS) for _ in range(max(1, count))]
    tokens[-1] += "."
    return tokens


def strip_prefix(tokens: list[str], prefix: str) -> tuple[list[str], int] | None:
    """What is left of an answer once ``prefix`` (the start of its text) is given.

    :returns: ``(rest, covered)``: the tokens after the prefix (the first one cut
        when the prefix ends inside a token) and how many tokens the prefix spans;
        None when the answer's text does not start with ``prefix``.
    """
    text = ""
    for i, token in enumerate(tokens):
        if text == prefix:
            return tokens[i:], i
        longer = text + token
        if len(longer) > len(prefix):
            if longer.startswith(prefix):
                return [longer[len(prefix):], *tokens[i + 1:]], i + 1
            return None
        if not prefix.startswith(longer):
            return None
        text = longer
    return ([], len(tokens)) if text == prefix else None


def thinking_tokens(rng: random.Random) -> list[str]:
    count = rng.randint(6, 12)
    words = [rng.choice(_THINK_WORDS) for _ in range(count)]
    words[0] = words[0].capitalize()
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _value_for_schema(schema: object, rng: random.Random, depth: int = 0) -> object:
    if not isinstance(schema, dict) or depth > 6:
        return rng.choice(_WORDS)
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        props = schema.get("properties")
        if not isinstance(props, dict):
            props = {}
        return {k: _value_for_schema(v, rng, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [_value_for_schema(schema.get("items"), rng, depth + 1) for _ in range(rng.randint(1, 3))]
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))


def json_text(fmt: object, rng: random.Random) -> str:
    """Valid JSON text for ``format``: ``"json"`` or a JSON-schema object."""
    if isinstance(fmt, dict):
        value = _value_for_schema(fmt, rng)
    else:
        value = {"answer": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8)))}
    return json.dumps(value)


def split_text(text: str, size: int = 4) -> list[str]:
    """Cut a text into stream fragments of about ``size`` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def pick_tool_call(tools: object, prompt: str, rng: random.Random) -> dict | None:
    """A tool call when the prompt names one of the tools (``get_weather`` or ``get weather``)."""
    if not isinstance(tools, list) or not prompt:
        return None
    lowered = prompt.lower()
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict):
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            continue
        if name.lower() in lowered or name.lower().replace("_", " ") in lowered:
            params = fn.get("parameters")
            if not isinstance(params, dict):
                params = {}
            args = _value_for_schema({"type": "object", **params}, rng)
            return {"function": {"name": name, "arguments": args if isinstance(args, dict) else {}}}
    return None


def embedding(model: str, text: str, dim: int, normalize: bool = True) -> list[float]:
    """A deterministic vector for ``text``; unit length when ``normalize``."""
    digest = hashlib.sha256(f"{model.lower()}\x00{text}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    vec = [rng.uniform(-1.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    scale = 1.0 / norm if normalize else (5.0 + digest[8] / 32.0) / norm
    return [v * scale for v in vec]


def float32_base64(vec: list[float]) -> str:
    import base64

    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
