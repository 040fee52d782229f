"""The simulator continues a begun answer the way Ollama does, deterministically:
a trailing assistant message (chat), the same conversation through generate, and
raw text that ends with the start of the answer."""

from __future__ import annotations

import json

import pytest
import requests

MODEL = "llama3.2:1b"


def stream(sim, path: str, body: dict) -> list[dict]:
    r = requests.post(sim.url + path, json={"model": MODEL, "stream": True, **body}, timeout=10)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.iter_lines() if line]


def chat_text(records: list[dict]) -> str:
    return "".join(r["message"]["content"] for r in records)


@pytest.mark.parametrize("options", [{"temperature": 0}, {"seed": 11}])
def test_a_trailing_assistant_message_is_continued_with_the_rest_of_the_answer(sim, options):
    question = [{"role": "user", "content": "Tell me about rivers."}]
    whole = stream(sim, "/api/chat", {"messages": question, "options": options})
    text, final = chat_text(whole), whole[-1]
    assert final["done"] and final["eval_count"] == len(whole) - 1
    for cut in (1, 5, len(whole) - 1):  # after the first record, mid-way, all but the end
        begun = chat_text(whole[:cut])
        rest = stream(sim, "/api/chat", {"options": options, "messages": [
            *question, {"role": "assistant", "content": begun}]})
        assert begun + chat_text(rest) == text
        # the new tokens only; the begun answer is read as prompt
        assert rest[-1]["eval_count"] == final["eval_count"] - cut
        assert rest[-1]["prompt_eval_count"] == final["prompt_eval_count"] + cut
        assert rest[-1]["done_reason"] == final["done_reason"]


def test_num_predict_counts_the_new_tokens_of_a_continuation(sim):
    question = [{"role": "user", "content": "Count."}]
    opts = {"temperature": 0, "num_predict": 6}
    whole = stream(sim, "/api/chat", {"messages": question, "options": opts})
    assert whole[-1]["done_reason"] == "length" and whole[-1]["eval_count"] == 6
    begun = chat_text(whole[:2])
    rest = stream(sim, "/api/chat", {"options": {**opts, "num_predict": 4}, "messages": [
        *question, {"role": "assistant", "content": begun}]})
    assert begun + chat_text(rest) == chat_text(whole)
    assert rest[-1]["done_reason"] == "length" and rest[-1]["eval_count"] == 4


def test_generate_answers_like_chat_with_system_and_user_messages(sim):
    opts = {"temperature": 0}
    gen = stream(sim, "/api/generate", {"prompt": "Why?", "system": "Be brief.",
                                        "options": opts})
    chat = stream(sim, "/api/chat", {"options": opts, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]})
    assert "".join(r["response"] for r in gen) == chat_text(chat)
    assert gen[-1]["eval_count"] == chat[-1]["eval_count"]


def test_raw_text_ending_with_the_start_of_the_answer_is_continued(sim):
    opts = {"seed": 4}
    prompt = "Once upon a time, "
    whole = stream(sim, "/api/generate", {"prompt": prompt, "raw": True, "options": opts})
    text = "".join(r["response"] for r in whole)
    begun = "".join(r["response"] for r in whole[:3])
    rest = stream(sim, "/api/generate", {"prompt": prompt + begun, "raw": True,
                                         "options": opts})
    assert begun + "".join(r["response"] for r in rest) == text
    assert rest[-1]["eval_count"] == whole[-1]["eval_count"] - 3


def test_a_prefix_that_is_not_the_answer_is_still_continued_deterministically(sim):
    body = {"options": {"temperature": 0}, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Zebras are"}]}
    first, second = stream(sim, "/api/chat", body), stream(sim, "/api/chat", body)
    assert chat_text(first) == chat_text(second) and chat_text(first).startswith(" ")


def test_temperature_zero_is_deterministic_without_a_seed(sim):
    body = {"prompt": "same", "stream": False, "options": {"temperature": 0}}
    a = requests.post(sim.url + "/api/generate", json={"model": MODEL, **body}, timeout=10)
    b = requests.post(sim.url + "/api/generate", json={"model": MODEL, **body}, timeout=10)
    assert a.json()["response"] == b.json()["response"]


def test_active_lists_the_generations_in_progress(make_sim):
    sim = make_sim(tokens_per_second=20)
    r = requests.post(sim.url + "/api/chat", stream=True, timeout=10, json={
        "model": MODEL, "messages": [{"role": "user", "content": "find me"}]})
    lines = r.iter_lines()
    next(lines)
    assert requests.get(sim.url + "/_sim/active", timeout=5).json() == {
        "prompts": ["user: find me"]}
    r.close()
