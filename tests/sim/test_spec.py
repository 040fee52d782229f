import pytest

from olol.sim import ModelSpec, SpecError, parse_models_spec
from olol.sim.spec import FOREVER, parse_keep_alive, parse_size


def test_full_spec_with_overrides():
    specs = parse_models_spec(
        "llama3.2:1b[size=1.3G,load=2,ttft=0.05,tps=40],nomic-embed-text[embed,dim=768]")
    llama, embed = specs
    assert llama == ModelSpec(name="llama3.2:1b", size=1_300_000_000, load_time=2.0,
                              ttft=0.05, tokens_per_second=40.0)
    assert llama.capabilities == ["completion", "tools", "thinking"]
    assert embed.name == "nomic-embed-text:latest"
    assert embed.embedding and embed.dim == 768 and embed.capabilities == ["embedding"]


def test_optional_fields_and_flags():
    (spec,) = parse_models_spec(
        " ns/my-model:q4 [family=qwen2, params=7B, quant=Q8_0, ctx=8192, nothink, notools] ")
    assert spec.name == "ns/my-model:q4"
    assert (spec.family, spec.parameter_size, spec.quantization) == ("qwen2", "7B", "Q8_0")
    assert spec.context_length == 8192 and spec.capabilities == ["completion"]
    assert spec.parameter_count == 7_000_000_000


@pytest.mark.parametrize("bad, fragment", [
    ("llama[size=big]", "bad size"),
    ("llama[tps=-1]", ">= 0"),
    ("llama[wat=1]", "unknown option"),
    ("llama[shiny]", "unknown flag"),
    ("llama[size=1G", "unbalanced"),
    ("llama,,qwen", "empty item"),
    ("bad name!", "invalid model name"),
    ("a,a:latest", "listed twice"),
    ("llama[dim=1.5]", "positive integer"),
])
def test_bad_specs_are_rejected_clearly(bad, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_models_spec(bad)


def test_sizes_and_keep_alive():
    assert parse_size("800M") == 800_000_000
    assert parse_size("123") == 123
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive(10) == 10
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive(-1) == FOREVER
    assert parse_keep_alive("-1m") == FOREVER
    assert parse_keep_alive(None) is None
    with pytest.raises(ValueError, match='missing unit in duration "3600"'):
        parse_keep_alive("3600")
    with pytest.raises(ValueError, match="Unsupported type"):
        parse_keep_alive([1])
