import pytest

from olol.api.names import (
    InvalidModelName,
    find_model,
    is_valid_model_name,
    model_matches,
    normalize_model_name,
    parse_model_name,
)

SAME_AS_LLAMA3 = [
    "llama3",
    "llama3:latest",
    "library/llama3",
    "library/llama3:latest",
    "registry.ollama.ai/library/llama3",
    "registry.ollama.ai/library/llama3:latest",
    "LLAMA3",
    "Registry.Ollama.AI/Library/Llama3:LATEST",
    "https://registry.ollama.ai/library/llama3:latest",
]


@pytest.mark.parametrize("a", SAME_AS_LLAMA3)
@pytest.mark.parametrize("b", SAME_AS_LLAMA3)
def test_every_spelling_of_llama3_matches_every_other(a, b):
    assert model_matches(a, b)


@pytest.mark.parametrize(
    "requested, available",
    [
        ("llama3.2", "llama3"),
        ("llama3", "llama3.2"),
        ("llama3", "llama3:8b"),
        ("llama3:8b", "llama3:70b"),
        ("llama", "llama3"),
        ("user/llama3", "llama3"),
        ("example.com/library/llama3", "llama3"),
        ("llama3:late", "llama3:latest"),
        ("", "llama3"),
        ("bad name", "bad name"),
    ],
)
def test_non_matches(requested, available):
    assert not model_matches(requested, available)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
        ("user/model", ("registry.ollama.ai", "user", "model", "latest")),
        ("example.com/ns/m:v1", ("example.com", "ns", "m", "v1")),
        ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
        (
            "Qwen2.5-Coder_X:7B-q4_K_M",
            ("registry.ollama.ai", "library", "Qwen2.5-Coder_X", "7B-q4_K_M"),
        ),
    ],
)
def test_parse_fills_defaults_and_keeps_case(name, expected):
    parsed = parse_model_name(name)
    assert (parsed.host, parsed.namespace, parsed.model, parsed.tag) == expected


@pytest.mark.parametrize(
    "name, normalized",
    [
        ("Llama3", "llama3:latest"),
        ("registry.ollama.ai/library/llama3:latest", "llama3:latest"),
        ("user/m:7b", "user/m:7b"),
        ("example.com/ns/m", "example.com/ns/m:latest"),
    ],
)
def test_normalize(name, normalized):
    assert normalize_model_name(name) == normalized


@pytest.mark.parametrize(
    "name",
    [
        "",
        ":",
        "m:",
        ":tag",
        "a/b/c/d",
        "ns.x/model",
        "mo del",
        "m:t@g",
        "a..b",
        "x" * 129,
        "/m",
        "ns/",
        "m:tag:tag",
        None,
        3,
    ],
)
def test_invalid_names(name):
    assert not is_valid_model_name(name)
    with pytest.raises(InvalidModelName):
        parse_model_name(name)


def test_full_and_short_forms():
    parsed = parse_model_name("llama3")
    assert parsed.full() == "registry.ollama.ai/library/llama3:latest"
    assert parsed.short() == "llama3:latest"


def test_find_model_picks_exact_model_never_prefix():
    available = ["llama3.2:latest", "llama3:8b", "llama3:latest"]
    assert find_model("llama3", available) == "llama3:latest"
    assert find_model("LLAMA3.2", available) == "llama3.2:latest"
    assert find_model("llama", available) is None
