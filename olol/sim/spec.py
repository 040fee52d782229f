"""Model descriptions for the simulator and the ``--models`` grammar.

Grammar of a models SPEC (whitespace around items is ignored)::

    SPEC    := MODEL ("," MODEL)*
    MODEL   := NAME [":" TAG] ["[" OPTION ("," OPTION)* "]"]
    OPTION  := KEY "=" VALUE | FLAG

``NAME`` may carry a namespace (``library/llama3.2``); the tag defaults to ``latest``.
Keys (all optional):

=========== ===================================================================
``size``    bytes on disk, with an optional K/M/G/T suffix (powers of 1000): ``1.3G``
``load``    seconds a load takes (overrides ``--load-time``)
``ttft``    seconds to the first token (overrides ``--ttft``)
``tps``     tokens per second, 0 = instant (overrides ``--tokens-per-second``)
``dim``     embedding dimension (default 768 for embedding models, 2048 otherwise)
``family``  model family, e.g. ``llama`` (default: guessed from the name)
``params``  parameter size text, e.g. ``1.2B``
``quant``   quantization level, e.g. ``Q4_K_M``
``ctx``     context length in tokens
=========== ===================================================================

Flags: ``embed`` (an embedding-only model), ``nothink`` (no thinking support),
``notools`` (no tool support).

Example: ``llama3.2:1b[size=1.3G,load=2,ttft=0.05,tps=40],nomic-embed-text[embed,dim=768]``
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

#: Forever, as Ollama reports a negative keep_alive (MaxInt64 nanoseconds).
FOREVER = float(2**63 - 1) / 1e9

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*){0,2}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    """A models SPEC (or a model name) that cannot be parsed."""


@dataclass(frozen=True)
class ModelSpec:
    """One simulated model. ``None`` timing fields fall back to the server-wide defaults."""

    name: str
    size: int = 1_300_000_000
    load_time: float | None = None
    ttft: float | None = None
    tokens_per_second: float | None = None
    embedding: bool = False
    dim: int = 0
    family: str = ""
    parameter_size: str = ""
    quantization: str = "Q4_K_M"
    context_length: int = 0
    thinking: bool = True
    tools: bool = True
    system: str = ""
    template: str = "{{ .Prompt }}"
    parameters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        if not self.family:
            object.__setattr__(self, "family", _guess_family(self.name, self.embedding))
        if self.dim <= 0:
            object.__setattr__(self, "dim", 768 if self.embedding else 2048)
        if not self.parameter_size:
            object.__setattr__(self, "parameter_size", _guess_params(self.size))
        if self.context_length <= 0:
            object.__setattr__(self, "context_length", 2048 if self.embedding else 131072)
        if self.embedding:
            object.__setattr__(self, "thinking", False)
            object.__setattr__(self, "tools", False)
        if self.size < 0:
            raise SpecError(f"model {self.name}: size must be >= 0")
        for label, value in (
            ("load", self.load_time),
            ("ttft", self.ttft),
            ("tps", self.tokens_per_second),
        ):
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise SpecError(f"model {self.name}: {label} must be a finite number >= 0")

    def renamed(self, name: str, **changes: Any) -> ModelSpec:
        """A copy of this spec under another name (copy, create)."""
        return dataclasses.replace(self, name=name, **changes)

    @property
    def capabilities(self) -> list[str]:
        if self.embedding:
            return ["embedding"]
        caps = ["completion"]
        if self.tools:
            caps.append("tools")
        if self.thinking:
            caps.append("thinking")
        return caps

    @property
    def parameter_count(self) -> int:
        return _params_to_int(self.parameter_size)


def normalize_name(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; raises SpecError on an invalid name."""
    name = name.strip()
    if not name or not _NAME_RE.match(name):
        raise SpecError(f"invalid model name {name!r}")
    base = name.rsplit("/", 1)[-1]
    if ":" not in base:
        name += ":latest"
    return name


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name.strip())) and bool(name.strip())


def parse_size(text: str) -> int:
    """``1.3G`` -> 1300000000 (powers of 1000, like Ollama's displayed sizes)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise SpecError(f"bad size {text!r} (expected e.g. 1300000000, 800M, 1.3G)")
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2).upper()])


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds (``"1h30m"``, ``"-1m"``)."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    pos = 0
    total = 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        if re.fullmatch(r"[0-9.]+", s):
            raise ValueError(f'time: missing unit in duration "{text}"')
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """Ollama's keep_alive: number = seconds, string = Go duration, negative = forever.

    Returns seconds (``FOREVER`` for negative values) or None when absent; raises ValueError
    with Ollama's message for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if not math.isfinite(seconds):
        raise ValueError("keep_alive must be finite")
    return FOREVER if seconds < 0 else seconds


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise SpecError(f"nested '[' in models spec at position {i}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced ']' in models spec at position {i}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SpecError("unbalanced '[' in models spec")
    parts.append(text[start:])
    return parts


def _number(model: str, key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SpecError(f"model {model}: {key}={value!r} is not a number") from None
    if number < 0 or not math.isfinite(number):
        raise SpecError(f"model {model}: {key} must be a finite number >= 0")
    return number


def parse_model(item: str) -> ModelSpec:
    """Parse one ``name[:tag][opts]`` item of a SPEC."""
    item = item.strip()
    opts_text = ""
    if "[" in item:
        if not item.endswith("]"):
            raise SpecError(f"{item!r}: options must end with ']'")
        item, opts_text = item[:-1].split("[", 1)
        item = item.strip()
    if not item:
        raise SpecError("empty model name in models spec")
    try:
        name = normalize_name(item)
    except SpecError:
        raise SpecError(f"invalid model name {item!r} in models spec") from None
    kwargs: dict[str, object] = {}
    for opt in (o.strip() for o in opts_text.split(",")) if opts_text.strip() else ():
        if not opt:
            raise SpecError(f"model {name}: empty option")
        key, sep, value = opt.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            flags = {"embed": ("embedding", True), "nothink": ("thinking", False),
                     "notools": ("tools", False)}
            if key not in flags:
                raise SpecError(f"model {name}: unknown flag {key!r} (flags: embed, nothink, notools)")
            kwargs[flags[key][0]] = flags[key][1]
            continue
        if not value:
            raise SpecError(f"model {name}: option {key!r} has an empty value")
        if key == "size":
            kwargs["size"] = parse_size(value)
        elif key in ("load", "ttft", "tps"):
            field = {"load": "load_time", "ttft": "ttft", "tps": "tokens_per_second"}[key]
            kwargs[field] = _number(name, key, value)
        elif key in ("dim", "ctx"):
            number = _number(name, key, value)
            if number != int(number) or number < 1:
                raise SpecError(f"model {name}: {key} must be a positive integer")
            kwargs["dim" if key == "dim" else "context_length"] = int(number)
        elif key == "family":
            kwargs["family"] = value
        elif key == "params":
            kwargs["parameter_size"] = value
        elif key == "quant":
            kwargs["quantization"] = value
        else:
            raise SpecError(
                f"model {name}: unknown option {key!r} "
                "(known: size, load, ttft, tps, dim, family, params, quant, ctx, embed, nothink, notools)"
            )
    if "embedding" not in kwargs and "embed" in name.split(":")[0].lower():
        kwargs["embedding"] = True
    if kwargs.get("embedding") and "size" not in kwargs:
        kwargs["size"] = 274_000_000
    return ModelSpec(name=name, **kwargs)  # type: ignore[arg-type]


def parse_models_spec(text: str) -> list[ModelSpec]:
    """Parse a whole SPEC (see the module docstring). Duplicate names are an error."""
    if not text or not text.strip():
        return []
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for item in _split_top(text):
        if not item.strip():
            raise SpecError("empty item in models spec (check for a stray comma)")
        spec = parse_model(item)
        if spec.name.lower() in seen:
            raise SpecError(f"model {spec.name} listed twice")
        seen.add(spec.name.lower())
        specs.append(spec)
    return specs


def default_catalog() -> dict[str, ModelSpec]:
    """Models a fresh simulator can pull (name -> spec)."""
    specs = parse_models_spec(
        "llama3.2:1b[size=1.3G,params=1.2B,family=llama],"
        "llama3.2:3b[size=2.0G,params=3.2B,family=llama],"
        "llama3.2:latest[size=2.0G,params=3.2B,family=llama],"
        "qwen2.5:0.5b[size=398M,params=494.03M,family=qwen2],"
        "qwen3:0.6b[size=523M,params=751.63M,family=qwen3],"
        "gemma3:1b[size=815M,params=999.89M,family=gemma3,notools],"
        "mistral:latest[size=4.1G,params=7.2B,family=llama],"
        "nomic-embed-text:latest[embed,dim=768,size=274M,params=137M,family=nomic-bert,quant=F16],"
        "all-minilm:latest[embed,dim=384,size=46M,params=23M,family=bert,quant=F16]"
    )
    return {s.name: s for s in specs}


def digest_of(*parts: object) -> str:
    """A stable ``sha256:<hex>`` digest of some identifying parts."""
    h = hashlib.sha256("\x00".join(str(p) for p in parts).encode())
    return "sha256:" + h.hexdigest()


def _guess_family(name: str, embedding: bool) -> str:
    base = name.rsplit("/", 1)[-1].split(":")[0].lower()
    if embedding:
        return "bert" if "minilm" in base else "nomic-bert" if "nomic" in base else "bert"
    for fam in ("llama", "qwen3", "qwen2", "gemma3", "gemma2", "gemma", "phi3", "mistral"):
        if base.startswith(fam):
            return "llama" if fam == "mistral" else fam
    return "llama"


def _guess_params(size: int) -> str:
    # Roughly one byte per parameter (between Q4 and Q8 weights).
    params = float(size)
    if params >= 1e9:
        return f"{params / 1e9:.1f}B"
    return f"{params / 1e6:.0f}M"


def _params_to_int(text: str) -> int:
    m = re.match(r"^\s*([\d.]+)\s*([KMBT]?)", text, re.IGNORECASE)
    if not m:
        return 0
    mult = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[m.group(2).upper()]
    try:
        return int(float(m.group(1)) * mult)
    except ValueError:
        return 0
