"""Go ``encoding/json`` compatible decoding: syntax and type errors in Go's words.

Ollama binds request bodies with ``json.Decoder.Decode`` (through gin), so a client that
sends broken JSON gets Go's wording back, e.g. ``invalid character 'x' looking for
beginning of value`` or ``unexpected EOF``. This module reproduces that wording with a
small scanner written after Go's state machine: it finds the first syntax error, or the
end of the first complete value (the decoder ignores what follows it).

:func:`check_struct` then checks a decoded body against the Go request struct it would
be bound to (``api/types.go``), raising :class:`GoDecodeError` with the message
``json: cannot unmarshal <kind> into Go struct field <Struct>.<path> of type <type>``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

_WS = b" \t\r\n"
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"
_ESCAPES = b'"\\/bfnrt'


class GoJSONSyntaxError(ValueError):
    """Broken JSON; ``str(exc)`` is Go's message."""


class GoDecodeError(ValueError):
    """JSON that is well formed but does not decode into the Go request struct (wrong
    field type, bad duration, bad think value, bad base64); ``str(exc)`` is Ollama's
    message."""


class _EOF(Exception):
    """The input ended inside a value."""


def quote_char(c: int) -> str:
    """Go's ``quoteChar``: how a byte is shown inside an error message."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    ch = chr(c)
    if 0x20 <= c < 0x7F:
        return f"'{ch}'"
    named = {
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\b": "\\b",
        "\f": "\\f",
        "\v": "\\v",
        "\a": "\\a",
        "\x00": "\\x00",
    }
    if ch in named:
        return f"'{named[ch]}'"
    if c >= 0x80:
        # Go converts the byte to the rune U+00XX before quoting it.
        return f"'{ch}'" if ch.isprintable() else f"'\\u{c:04x}'"
    return f"'\\x{c:02x}'"


def _err(c: int, context: str) -> GoJSONSyntaxError:
    return GoJSONSyntaxError(f"invalid character {quote_char(c)} {context}")


class _Scanner:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise _EOF
        return self.data[self.pos]

    def next(self) -> int:
        c = self.peek()
        self.pos += 1
        return c

    def skip_ws(self) -> int:
        while True:
            c = self.peek()
            if c not in _WS:
                return c
            self.pos += 1

    def value(self) -> None:
        c = self.skip_ws()
        if c == ord("{"):
            self.pos += 1
            self.obj()
        elif c == ord("["):
            self.pos += 1
            self.arr()
        elif c == ord('"'):
            self.pos += 1
            self.string()
        elif c == ord("-") or c in _DIGITS:
            self.number()
        elif c in b"tfn":
            self.literal({ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}[c])
        else:
            raise _err(c, "looking for beginning of value")

    def obj(self) -> None:
        c = self.skip_ws()
        if c == ord("}"):
            self.pos += 1
            return
        while True:
            if c != ord('"'):
                raise _err(c, "looking for beginning of object key string")
            self.pos += 1
            self.string()
            c = self.skip_ws()
            if c != ord(":"):
                raise _err(c, "after object key")
            self.pos += 1
            self.value()
            c = self.skip_ws()
            self.pos += 1
            if c == ord("}"):
                return
            if c != ord(","):
                raise _err(c, "after object key:value pair")
            c = self.skip_ws()

    def arr(self) -> None:
        c = self.skip_ws()
        if c == ord("]"):
            self.pos += 1
            return
        while True:
            self.value()
            c = self.skip_ws()
            self.pos += 1
            if c == ord("]"):
                return
            if c != ord(","):
                raise _err(c, "after array element")

    def string(self) -> None:
        while True:
            c = self.next()
            if c == ord('"'):
                return
            if c == ord("\\"):
                e = self.next()
                if e == ord("u"):
                    for _ in range(4):
                        h = self.next()
                        if h not in _HEX:
                            raise _err(h, "in \\u hexadecimal character escape")
                elif e not in _ESCAPES:
                    raise _err(e, "in string escape code")
            elif c < 0x20:
                raise _err(c, "in string literal")

    def _end_of_number(self) -> bool:
        return self.pos >= len(self.data)

    def number(self) -> None:
        if self.peek() == ord("-"):
            self.pos += 1
            c = self.next()
            if c not in _DIGITS:
                raise _err(c, "in numeric literal")
        else:
            c = self.next()
        if c != ord("0"):
            while not self._end_of_number() and self.data[self.pos] in _DIGITS:
                self.pos += 1
        if self._end_of_number():
            return
        if self.data[self.pos] == ord("."):
            self.pos += 1
            c = self.next()
            if c not in _DIGITS:
                raise _err(c, "after decimal point in numeric literal")
            while not self._end_of_number() and self.data[self.pos] in _DIGITS:
                self.pos += 1
            if self._end_of_number():
                return
        if self.data[self.pos] in b"eE":
            self.pos += 1
            c = self.next()
            if c in b"+-":
                c = self.next()
            if c not in _DIGITS:
                raise _err(c, "in exponent of numeric literal")
            while not self._end_of_number() and self.data[self.pos] in _DIGITS:
                self.pos += 1

    def literal(self, word: bytes) -> None:
        self.pos += 1
        for expected in word[1:]:
            c = self.next()
            if c != expected:
                raise _err(c, f"in literal {word.decode()} (expecting {quote_char(expected)})")


def scan_first_value(data: bytes) -> int:
    """Check the first JSON value of ``data`` as Go's decoder would.

    :returns: the offset just past that value.
    :raises EOFError: when ``data`` holds nothing but whitespace (Go's ``io.EOF``).
    :raises GoJSONSyntaxError: with Go's message (``unexpected EOF`` when the value is
        cut short).
    """
    if not data.strip(_WS):
        raise EOFError("EOF")
    scanner = _Scanner(data)
    try:
        scanner.value()
    except _EOF:
        raise GoJSONSyntaxError("unexpected EOF") from None
    return scanner.pos


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def json_kind(value: Any) -> str:
    """Go's ``UnmarshalTypeError.Value`` for a decoded JSON value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


# --- typed decoding ---------------------------------------------------------------


def field_value(body: Mapping[str, Any], name: str) -> Any:
    """Go matches JSON keys to struct fields case-insensitively, the last match winning."""
    if name in body and all(k == name or k.lower() != name for k in body):
        return body[name]
    found = None
    for key, value in body.items():
        if key.lower() == name:
            found = value
    return found


def _type_error(value: Any, struct: str, path: str, gotype: str) -> GoDecodeError:
    gotype = gotype.lstrip("*")  # Go reports the pointed-to type
    kind = json_kind(value)
    if kind == "number" and gotype == "int":
        kind = f"number {value!r}"
    return GoDecodeError(
        f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} of type {gotype}"
    )


def is_int(value: Any) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and (INT64_MIN <= value <= INT64_MAX)
    )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_SIMPLE: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "*bool": lambda v: isinstance(v, bool),
    "int": is_int,
    "float64": is_number,
    "map[string]interface {}": lambda v: isinstance(v, dict),
    "map[string]string": lambda v: isinstance(v, dict),
    "json.RawMessage": lambda v: True,
    "interface {}": lambda v: True,
}


def _check(
    value: Any, gotype: str, struct: str, path: str, structs: Mapping[str, Mapping[str, str]]
) -> None:
    """Raise the Go decoder's error if ``value`` cannot decode into ``gotype``."""
    if value is None:
        return  # null leaves any Go value at its zero value
    if gotype.startswith("[]"):
        elem = gotype[2:]
        if not isinstance(value, list):
            raise _type_error(value, struct, path, gotype)
        for item in value:
            _check(item, elem, struct, path, structs)
        return
    if gotype == "map[string]string":
        if not isinstance(value, dict):
            raise _type_error(value, struct, path, gotype)
        for item in value.values():
            _check(item, "string", struct, path, structs)
        return
    if gotype == "api.ImageData":
        if not isinstance(value, str):
            raise _type_error(value, struct, path, gotype)
        _check_base64(value)
        return
    if gotype.lstrip("*") in structs:
        gotype = gotype.lstrip("*")
        if not isinstance(value, dict):
            raise _type_error(value, struct, path, gotype)
        check_struct(value, gotype, path, structs=structs)
        return
    if gotype == "*api.Duration":
        check_duration(value)
        return
    if gotype == "*api.ThinkValue":
        check_think(value)
        return
    if not _SIMPLE[gotype.lstrip("*")](value):
        raise _type_error(value, struct, path, gotype)


def check_struct(
    body: Mapping[str, Any],
    gotype: str,
    prefix: str = "",
    *,
    structs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Check ``body`` against the Go struct ``gotype`` (a key of :data:`API_STRUCTS` or of
    ``structs``), recursively.

    :raises GoDecodeError: with the message Go's decoder would give for the first
        wrongly typed field (struct fields are visited in declaration order).
    """
    structs = structs if structs is not None else API_STRUCTS
    struct_name = gotype.split(".")[-1]
    for name, field_type in structs[gotype].items():
        value = field_value(body, name)
        path = f"{prefix}.{name}" if prefix else name
        _check(value, field_type, struct_name, path, structs)


_B64_ALPHABET = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _check_base64(text: str) -> None:
    """Go decodes ``[]byte`` fields with padded standard base64 (CR/LF ignored)."""
    stripped = text.replace("\r", "").replace("\n", "")
    try:
        base64.b64decode(stripped, validate=True)
        return
    except (binascii.Error, ValueError):
        pass
    match = _B64_ALPHABET.match(stripped)
    offset = match.end() if match and match.end() < len(stripped) else len(stripped)
    if offset == len(stripped):
        offset = len(stripped) - len(stripped) % 4
    raise GoDecodeError(f"illegal base64 data at input byte {offset}")


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds.

    :raises ValueError: with Go's message (``time: invalid duration "x"``,
        ``time: missing unit in duration "x"``, ``time: unknown unit "u" in duration "x"``).
    """
    quoted = json.dumps(text, ensure_ascii=False)
    s = text
    sign = 1.0
    if s[:1] in ("-", "+"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while s:
        match = _DURATION_PART.match(s)
        assert match is not None  # every part of the pattern is optional: it always matches
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(
                f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}"
            )
        number = float(f"{whole or '0'}.{frac or '0'}")
        total += number * _DURATION_UNITS[unit]
        s = s[match.end() :]
    return sign * total


def check_duration(value: Any) -> None:
    if value is None or is_number(value):
        return
    if isinstance(value, str):
        try:
            parse_go_duration(value)
        except ValueError as exc:
            raise GoDecodeError(str(exc)) from None
        return
    gotype = {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}
    raise GoDecodeError(f"Unsupported type: '{gotype[type(value)]}'")


THINK_LEVELS = ("high", "medium", "low", "max")


def check_think(value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str) and value in THINK_LEVELS:
        return
    shown = json.dumps(value) if isinstance(value, str) else orjson.dumps(value).decode()
    raise GoDecodeError(
        f'invalid think value: {shown} (must be "high", "medium", "low", "max", true, or false)',
    )


# Request structs as api/types.go declares them: JSON name -> Go type.
_MESSAGE = {
    "role": "string",
    "content": "string",
    "thinking": "string",
    "images": "[]api.ImageData",
    "tool_calls": "[]api.ToolCall",
    "tool_name": "string",
    "tool_call_id": "string",
}
API_STRUCTS: dict[str, dict[str, str]] = {
    "api.Message": _MESSAGE,
    "api.ToolCall": {"id": "string", "function": "api.ToolCallFunction"},
    "api.ToolCallFunction": {
        "index": "int",
        "name": "string",
        "arguments": "map[string]interface {}",
    },
    "api.Tool": {"type": "string", "function": "api.ToolFunction"},
    "api.ToolFunction": {
        "name": "string",
        "description": "string",
        "parameters": "map[string]interface {}",
    },
    "api.GenerateRequest": {
        "model": "string",
        "prompt": "string",
        "suffix": "string",
        "system": "string",
        "template": "string",
        "context": "[]int",
        "stream": "*bool",
        "raw": "bool",
        "format": "json.RawMessage",
        "keep_alive": "*api.Duration",
        "images": "[]api.ImageData",
        "options": "map[string]interface {}",
        "think": "*api.ThinkValue",
        "truncate": "*bool",
        "shift": "*bool",
        "logprobs": "bool",
        "top_logprobs": "int",
        "_debug_render_only": "bool",
    },
    "api.ChatRequest": {
        "model": "string",
        "messages": "[]api.Message",
        "stream": "*bool",
        "format": "json.RawMessage",
        "keep_alive": "*api.Duration",
        "tools": "[]api.Tool",
        "options": "map[string]interface {}",
        "think": "*api.ThinkValue",
        "truncate": "*bool",
        "shift": "*bool",
        "logprobs": "bool",
        "top_logprobs": "int",
        "_debug_render_only": "bool",
    },
    "api.EmbedRequest": {
        "model": "string",
        "input": "interface {}",
        "keep_alive": "*api.Duration",
        "truncate": "*bool",
        "dimensions": "int",
        "options": "map[string]interface {}",
    },
    "api.EmbeddingRequest": {
        "model": "string",
        "prompt": "string",
        "keep_alive": "*api.Duration",
        "options": "map[string]interface {}",
    },
    "api.ShowRequest": {
        "model": "string",
        "system": "string",
        "template": "string",
        "verbose": "bool",
        "options": "map[string]interface {}",
        "name": "string",
    },
    "api.PullRequest": {
        "model": "string",
        "insecure": "bool",
        "username": "string",
        "password": "string",
        "stream": "*bool",
        "name": "string",
    },
    "api.CreateRequest": {
        "model": "string",
        "stream": "*bool",
        "quantize": "string",
        "from": "string",
        "files": "map[string]string",
        "adapters": "map[string]string",
        "template": "string",
        "license": "interface {}",
        "system": "string",
        "parameters": "map[string]interface {}",
        "messages": "[]api.Message",
        "name": "string",
        "quantization": "string",
    },
    "api.CopyRequest": {"source": "string", "destination": "string"},
    "api.DeleteRequest": {"model": "string", "name": "string"},
}
API_STRUCTS["api.PushRequest"] = API_STRUCTS["api.PullRequest"]
