"""Hypothesis strategies for what a client can send the proxy: JSON values of every kind,
bodies built from a route's real field names with right and wrong values, raw bytes,
headers (Content-Type, X-OLOL-Priority, X-OLOL-Session, X-OLOL-Nodes, Authorization),
path parameters and query strings.

A request is drawn as a :class:`Plan`; the key it authenticates with is symbolic
(``auth``) because the keys exist only once the proxies run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from hypothesis import strategies as st

from tests.fuzz.harness import (
    EMBED_MODEL,
    MODEL,
    QUERY_FIELDS,
    Route,
    fill_path,
    route_fields,
)

# -- scalars -------------------------------------------------------------------------------

#: Every code point, lone surrogates included (they travel as \\udXXX escapes or as
#: invalid UTF-8).
any_char = st.characters(codec=None, exclude_categories=())
texts = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=any_char, max_size=20),
    st.sampled_from(["", " ", "null", "true", "0", "-1", "1e400", "\u0000", "\ufffd",
                     "\ud800", "\udfff", "\U0001F600", "\u202e", "a" * 5000]),
)
huge_ints = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64,
                             10**30, -(10**40), 10**400])
ints = st.one_of(st.integers(min_value=-5, max_value=300), st.integers(), huge_ints)
floats = st.one_of(
    st.floats(),  # NaN and infinities too: json.dumps writes them as NaN / Infinity
    st.sampled_from([0.5, -0.0, 1e-310, 1e300, -1e300, 2.0**63, 1.7976931348623157e308]),
)
model_names = st.one_of(
    st.sampled_from([
        MODEL, EMBED_MODEL, EMBED_MODEL + ":latest", "LLAMA3.2:1B", "llama3.2", "qwen2.5:0.5b",
        "registry.ollama.ai/library/llama3.2:1b", "ns/model:tag", "x/y/.", ".", "..", "-x",
        "a" * 400, "m:" + "t" * 200, "llama3.2:1b:extra", "sha256:" + "0" * 64, "",
        "all-minilm", "gemma3:1b", "../../etc/passwd", "model with spaces", "m\u00e9:t",
    ]),
    texts,
)
digests = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64).map(
        lambda h: "sha256:" + h),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256-" + h),
    st.sampled_from(["sha256:" + "0" * 63, "sha256:", "sha512:" + "0" * 128, "sha256:" + "g" * 64]),
)
addresses = st.one_of(
    st.sampled_from(["127.0.0.1:1", "localhost:0", "[::1]:50051", "host:99999", "a:1", ":80",
                     "127.0.0.1", "[::1]", "h:p", " 127.0.0.1:9 ", "256.0.0.1:1",
                     "x" * 300 + ":1"]),
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.1", "localhost", "0.0.0.0"]),
              st.integers(min_value=-1, max_value=70000)),
    texts,
)
durations = st.one_of(
    st.sampled_from(["5m", "0", "0s", "-1", "-1s", "1h", "10x", "1.5h", "9999999999h", "1e3s",
                     "", "m", "5m5m", "-0", "+5m", ".s", "1ns"]),
    ints, floats,
)

# -- JSON values ---------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, model_names)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(texts, st.sampled_from(["model", "role", "content", "type",
                                                          "error", "messages"])),
                        children, max_size=5),
    ),
    max_leaves=15,
)


def nested(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


deep_values = st.builds(nested, st.sampled_from([150, 199, 200, 201, 260, 1000]),
                        st.sampled_from(["list", "dict"]))

# -- plausible field values ----------------------------------------------------------------

option_keys = st.sampled_from([
    "num_ctx", "num_predict", "temperature", "top_p", "top_k", "seed", "stop", "use_mmap",
    "num_gpu", "num_thread", "num_batch", "main_gpu", "repeat_penalty", "min_p", "unknown",
])
options = st.dictionaries(option_keys, st.one_of(ints, floats, texts, st.booleans(),
                                                 st.lists(texts, max_size=3), st.none()),
                          max_size=4)
roles = st.sampled_from(["user", "system", "assistant", "tool", "", "USER", "developer"])
content = st.one_of(
    texts,
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]),
                                    "text": texts}), max_size=3),
    json_values,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": roles, "content": content}),
        st.fixed_dictionaries({"role": roles, "content": texts},
                              optional={"images": st.lists(texts, max_size=2),
                                        "tool_calls": json_values,
                                        "thinking": texts, "tool_name": texts}),
        json_values,
    ),
    max_size=4,
)
tools = st.lists(
    st.one_of(
        st.fixed_dictionaries({
            "type": st.sampled_from(["function", "x"]),
            "function": st.fixed_dictionaries({"name": texts},
                                              optional={"parameters": json_values,
                                                        "description": texts}),
        }),
        json_values,
    ),
    max_size=3,
)
formats = st.one_of(st.sampled_from(["json", "", "xml"]),
                    st.just({"type": "object", "properties": {"a": {"type": "string"}}}),
                    json_values)
stop = st.one_of(texts, st.lists(texts, max_size=4), json_values)
bools = st.one_of(st.booleans(), st.sampled_from(["true", 1, 0, None]))

PLAUSIBLE: dict[str, st.SearchStrategy] = {
    "model": model_names, "name": model_names, "source": model_names,
    "destination": model_names, "from": model_names,
    "messages": messages,
    "prompt": st.one_of(texts, st.lists(texts, max_size=3)), "system": texts,
    "template": texts, "suffix": texts, "content": content,
    "stream": bools, "raw": bools, "insecure": bools, "verbose": bools, "truncate": bools,
    "shift": bools, "logprobs": st.one_of(bools, ints), "apply": bools, "echo": bools,
    "_debug_render_only": bools,
    "options": options, "parameters": options,
    "keep_alive": durations,
    "format": formats,
    "input": st.one_of(texts, st.lists(texts, max_size=4), st.lists(ints, max_size=3)),
    "images": st.lists(st.one_of(texts, st.just("aGVsbG8=")), max_size=2),
    "context": st.lists(ints, max_size=5),
    "tools": tools,
    "think": st.one_of(st.booleans(), st.sampled_from(["high", "low", "medium", "max", "x"])),
    "address": addresses,
    "endpoint": st.one_of(st.sampled_from(["generate", "chat", "embed", "embeddings", "show",
                                           "pull", ""]), texts),
    "priority": st.one_of(ints, floats, texts, st.booleans()),
    "nodes": st.one_of(st.lists(addresses, max_size=3),
                       st.lists(addresses, max_size=3).map(",".join), json_values),
    "files": st.dictionaries(texts, st.one_of(digests, texts), max_size=3),
    "adapters": st.dictionaries(texts, st.one_of(digests, texts), max_size=2),
    "quantize": st.sampled_from(["q4_K_M", "q8_0", "", "bogus"]),
    "max_tokens": ints, "max_completion_tokens": ints, "seed": ints, "top_logprobs": ints,
    "dimensions": ints, "n": ints, "top_k": ints,
    "temperature": floats, "top_p": floats, "frequency_penalty": floats,
    "presence_penalty": floats,
    "stop": stop,
    "response_format": st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["json_object", "json_schema", "text",
                                                        "x"])},
                              optional={"json_schema": st.fixed_dictionaries(
                                  {"schema": json_values})}),
        json_values),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": bools}), json_values),
    "encoding_format": st.sampled_from(["float", "base64", "x", ""]),
    "reasoning_effort": st.sampled_from(["none", "low", "high", "xhigh", "bogus", ""]),
    "reasoning": st.one_of(st.fixed_dictionaries({"effort": texts}), json_values),
    "license": st.one_of(texts, st.lists(texts, max_size=2)),
}


@st.composite
def field_bodies(draw, fields: tuple[str, ...], depth: int = 0) -> dict:
    """An object of some of ``fields``, each right-typed (plausible) or anything."""
    chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=min(6, len(fields))))
    body: dict = {}
    for name in chosen:
        if name == "body" and depth == 0:  # a job's native body: a chat/generate/embed body
            inner = draw(st.sampled_from([route_fields("ollama.chat"),
                                          route_fields("ollama.generate"),
                                          route_fields("ollama.embed")]))
            plausible = field_bodies(inner, depth + 1)
        else:
            plausible = PLAUSIBLE.get(name, json_values)
        body[name] = draw(st.one_of(plausible, plausible, json_values))
    if draw(st.integers(0, 9)) == 0:  # an unknown extra member
        body[draw(texts)] = draw(json_values)
    return body


def valid_chat_body(model: str = MODEL) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}


# -- bytes ---------------------------------------------------------------------------------


def encode(value: object, style: str) -> bytes:
    if style == "ascii":  # lone surrogates as \\udXXX escapes; NaN/Infinity as Python writes them
        return json.dumps(value, ensure_ascii=True).encode()
    if style == "utf8":  # lone surrogates as invalid UTF-8 bytes
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "pretty":
        return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8", "surrogatepass")
    raise ValueError(style)


styles = st.sampled_from(["ascii", "utf8", "pretty"])


@st.composite
def bodies(draw, fields: tuple[str, ...]) -> bytes:
    kind = draw(st.sampled_from(["fields", "fields", "fields", "fields", "json", "json",
                                 "raw", "empty", "truncated", "trailing", "deep", "big",
                                 "valid-ish"]))
    if kind == "empty":
        return draw(st.sampled_from([b"", b" ", b"\n\t ", b"null", b"{}"]))
    if kind == "raw":
        return draw(st.one_of(st.binary(max_size=200),
                              st.sampled_from([b"{", b"{\"model\":", b"[1,2", b"\xff\xfe{}",
                                               b"\xef\xbb\xbf{}", b"{'a': 1}", b"{\"a\":1,}",
                                               b"NaN", b"-", b"\"\\u12\"", b"{\"a\" 1}",
                                               b"model=llama3.2:1b&prompt=hi"])))
    if kind == "json":
        return encode(draw(json_values), draw(styles))
    if kind == "deep":
        return encode({draw(st.sampled_from(fields)): draw(deep_values)}, "ascii")
    if kind == "big":  # a few hundred KiB: well under the limit, but a lot to decode
        size = draw(st.sampled_from([100_000, 400_000]))
        return encode({draw(st.sampled_from(fields)): "x" * size, "model": MODEL}, "ascii")
    body = draw(field_bodies(fields))
    if kind == "valid-ish":
        body = {**valid_chat_body(), **body}
    raw = encode(body, draw(styles))
    if kind == "truncated" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "trailing":
        raw += draw(st.sampled_from([b"garbage", b"{}", b"\x00", b" {\"model\": 1}", b"]"]))
    return raw


# -- headers -------------------------------------------------------------------------------

#: Header values http.client accepts: no CR/LF, latin-1.
header_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                   exclude_characters="\x7f"), max_size=40),
    st.sampled_from(["", " ", "\t", "null", "0", "-0", " 5 ", "1e3", "NaN", "1.5", "+7",
                     "99999999999999999999999", "-100", "101", "x" * 300, "0x10", "١٢"]),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "multipart/form-data", "application/x-ndjson", "application/octet-stream",
                     "", "application/json; charset=latin-1", "*/*"]),
    header_text,
)
#: (kind, detail): resolved against the running proxy's keys by the test.
auth = st.one_of(
    st.just(("none", "")),
    st.just(("admin", "")), st.just(("admin", "")),
    st.just(("user", "")),
    st.tuples(st.just("raw"), header_text),
    st.tuples(st.just("bearer"), header_text),
    st.tuples(st.just("admin-variant"), st.sampled_from(["lower", "basic", "spaces", "cut",
                                                         "doubled", "bearer-only"])),
)


@dataclass
class Plan:
    method: str
    path: str
    headers: list[tuple[str, str]]
    auth: tuple[str, str]
    body: bytes
    chunked: bool
    target: str  # "open" or "keyed"


RANDOM_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE",
                  "PROPFIND"]


def _param(converter: str) -> st.SearchStrategy:
    if converter == "path":  # may hold slashes
        raw = st.one_of(model_names, addresses, texts, digests,
                        st.sampled_from(["a/b/c", "/", "a//b", "../x", "%2F", "models/pull"]))
        safe = "/"
    else:
        raw = st.one_of(texts, digests, model_names, st.text("0123456789abcdef", min_size=32,
                                                             max_size=32),
                        st.sampled_from(["compact", "retention", "health", "optimize",
                                         "stats", "backup", "run"]))
        safe = ""
    return st.builds(lambda text, extra: quote(text.encode("utf-8", "surrogatepass"),
                                               safe=safe + extra),
                     raw, st.sampled_from(["", "", ":@!$&'()*+,;="]))


def _nonempty(encoded: str) -> str:
    return encoded or "%20"


@st.composite
def plans(draw, route: Route) -> Plan:
    """One request to ``route``: its path with generated parameters, a query string,
    headers, a body, and sometimes another method."""
    values = {name: _nonempty(draw(_param(conv))) for name, conv in route.params}
    path = fill_path(route.rule, values)
    query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_FIELDS), texts),
                                    st.one_of(texts, st.sampled_from(["1", "true", "0", "-5",
                                                                      "pending", "x"]))),
                          max_size=3))
    if query:
        path += "?" + urlencode([(k.encode("utf-8", "surrogatepass"),
                                  v.encode("utf-8", "surrogatepass")) for k, v in query])
    method = route.method if draw(st.integers(0, 11)) else draw(st.sampled_from(RANDOM_METHODS))
    headers: list[tuple[str, str]] = []
    ctype = draw(content_types)
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    for name in ("X-OLOL-Priority", "X-OLOL-Session", "X-OLOL-Nodes"):
        if draw(st.integers(0, 3)) == 0:
            headers.append((name, draw(header_text)))
    if draw(st.integers(0, 9)) == 0:
        headers.append(draw(st.sampled_from([
            ("Expect", "100-continue"), ("Accept-Encoding", "gzip"), ("Accept", "text/html"),
            ("Connection", "keep-alive"), ("X-Forwarded-For", "1.2.3.4"),
            ("Content-Encoding", "gzip"), ("Range", "bytes=0-1"),
        ])))
    fields = route_fields(route.endpoint)
    body = draw(bodies(fields)) if draw(st.integers(0, 5)) else b""
    return Plan(
        method=method, path=path, headers=headers, auth=draw(auth), body=body,
        chunked=draw(st.integers(0, 9)) == 0, target=draw(st.sampled_from(["open", "keyed"])),
    )


def resolve_auth(kind: str, detail: str, admin_key: str, user_key: str) -> str | None:
    """The Authorization header value for a symbolic ``auth`` (None: no header)."""
    if kind == "none":
        return None
    if kind == "admin":
        return f"Bearer {admin_key}"
    if kind == "user":
        return f"Bearer {user_key}"
    if kind == "raw":
        return detail
    if kind == "bearer":
        return f"Bearer {detail}"
    variants = {
        "lower": f"bearer {admin_key}", "basic": f"Basic {admin_key}",
        "spaces": f"  Bearer    {admin_key}  ", "cut": f"Bearer {admin_key[:-1]}",
        "doubled": f"Bearer {admin_key} {admin_key}", "bearer-only": "Bearer",
    }
    return variants[detail]

