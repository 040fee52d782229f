import pytest

from olol.api.validation import coalesce_key, validate_chat, validate_embed, validate_generate


def gen(**body):
    return validate_generate({"model": "llama3", "prompt": "hi", **body})


def test_nondeterministic_requests_have_no_coalesce_key():
    assert gen().coalesce_key is None
    assert gen(options={"temperature": 0.7}).coalesce_key is None
    assert gen(options={"seed": -1}).coalesce_key is None


@pytest.mark.parametrize(
    "options",
    [{"seed": 42}, {"temperature": 0}, {"temperature": 0.0}, {"seed": 0, "temperature": 1.0}],
)
def test_deterministic_requests_have_a_key(options):
    key = gen(options=options).coalesce_key
    assert isinstance(key, str) and len(key) == 64


def test_key_is_stable_across_dict_order_model_spelling_and_keep_alive():
    a = validate_generate(
        {
            "model": "llama3",
            "prompt": "hi",
            "stream": False,
            "options": {"seed": 1, "top_k": 5},
            "keep_alive": "5m",
        }
    )
    b = validate_generate(
        {
            "options": {"top_k": 5, "seed": 1},
            "stream": False,
            "prompt": "hi",
            "model": "registry.ollama.ai/library/llama3:latest",
        }
    )
    assert a.coalesce_key == b.coalesce_key == coalesce_key(a)
    assert (
        gen(options={"temperature": 0}).coalesce_key
        == gen(options={"temperature": 0.0}).coalesce_key
    )


@pytest.mark.parametrize(
    "other",
    [
        {"options": {"seed": 2}},
        {"options": {"seed": 1, "num_ctx": 4096}},
        {"prompt": "hello"},
        {"stream": False},
        {"system": "be brief"},
        {"format": "json"},
        {"model": "llama3.2"},
    ],
)
def test_any_difference_in_input_changes_the_key(other):
    base = {"model": "llama3", "prompt": "hi", "options": {"seed": 1}}
    assert validate_generate(base).coalesce_key != validate_generate({**base, **other}).coalesce_key


def test_generate_and_chat_never_share_a_key():
    g = gen(options={"seed": 1})
    c = validate_chat(
        {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "options": {"seed": 1}}
    )
    assert c.coalesce_key and g.coalesce_key != c.coalesce_key


def test_load_and_unload_requests_are_not_coalesced():
    assert validate_generate({"model": "m", "options": {"seed": 1}}).coalesce_key is None


def test_embeddings_are_always_deterministic():
    a = validate_embed({"model": "all-minilm", "input": ["a", "b"]})
    b = validate_embed({"input": ["a", "b"], "model": "all-minilm:latest"})
    assert a.coalesce_key is not None and a.coalesce_key == b.coalesce_key
    assert a.coalesce_key != validate_embed({"model": "all-minilm", "input": ["a"]}).coalesce_key


def test_batch_key_groups_by_model_and_runner_options_only():
    a = gen(options={"num_ctx": 8192, "temperature": 0.1})
    b = validate_chat(
        {"model": "Llama3:latest", "messages": [], "options": {"num_ctx": 8192, "seed": 3}}
    )
    assert a.batch_key == b.batch_key
    assert a.batch_key != gen(options={"num_ctx": 4096}).batch_key
    assert (
        a.batch_key
        != validate_generate(
            {"model": "llama3.2", "prompt": "x", "options": {"num_ctx": 8192}}
        ).batch_key
    )
    assert gen().batch_key == gen(options={"num_gpu": -1}).batch_key


def test_embed_batch_key_allows_merging_inputs():
    a = validate_embed({"model": "e", "input": "x", "truncate": True})
    b = validate_embed({"model": "e", "input": ["y", "z"], "truncate": True})
    assert a.batch_key == b.batch_key
    assert a.batch_key != validate_embed({"model": "e", "input": "x", "dimensions": 8}).batch_key
    assert a.batch_key != gen().batch_key
