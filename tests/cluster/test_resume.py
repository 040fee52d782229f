"""olol.resume: how a broken stream is continued (the seam), and the counts of the
one final record the client gets. Units, no network."""

from __future__ import annotations

import orjson

from olol.resume import MARKER, Resume, Segment, Transcript, carry_over


def chat_record(content: str, **extra) -> dict:
    return {"model": "m", "created_at": "t", "message": {"role": "assistant",
                                                        "content": content, **extra},
            "done": False}


def segment(text: str, records: int, **kw) -> Segment:
    return Segment(text=text, records=records, started=10.0, first=10.5, last=11.5,
                   ended=12.0, **kw)


def plan(endpoint: str, body: dict, seg: Segment, prior: Resume | None = None,
         max_resumes: int = 2) -> Resume:
    out = carry_over(endpoint, body, prior, seg, "node-a", max_resumes=max_resumes, attempts=1)
    assert isinstance(out, Resume), out
    return out


def test_the_transcript_reads_node_messages_and_records_alike():
    t = Transcript("chat", started=1.0)
    t.add(orjson.dumps(chat_record("Hel")) + b"\n" + orjson.dumps(chat_record("lo")), 1.5)
    t.add(chat_record(" you"), 2.0)
    seg = t.segment(3.0)
    assert (seg.text, seg.records, seg.thinking, seg.tool_calls) == ("Hello you", 3, False, False)
    assert (seg.started, seg.first, seg.last, seg.ended) == (1.0, 1.5, 2.0, 3.0)
    t.add(chat_record("", thinking="hmm"), 2.5)
    assert t.segment(3.0).thinking
    g = Transcript("generate", started=0.0)
    g.add(orjson.dumps({"response": "a", "done": False}), 0.1)
    assert g.segment(1.0).text == "a"


def test_chat_is_continued_with_the_text_as_a_final_assistant_message():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
            "options": {"temperature": 0}}
    r = plan("chat", body, segment("The river", 2))
    endpoint, call = r.call()
    assert endpoint == "chat"
    assert call["messages"] == [{"role": "user", "content": "q"},
                                {"role": "assistant", "content": "The river"}]
    assert call["options"] == {"temperature": 0} and body["messages"][-1]["role"] == "user"


def test_a_prefill_of_the_caller_is_extended_not_repeated():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "Sure:"}]}
    r = plan("chat", body, segment(" one", 1))
    assert r.call()[1]["messages"][-1] == {"role": "assistant", "content": "Sure: one"}


def test_generate_is_continued_through_chat_and_answered_as_generate():
    body = {"model": "m", "prompt": "Why?", "system": "Be brief.", "images": ["aGk="],
            "options": {"seed": 1}, "keep_alive": "5m", "stream": True}
    r = plan("generate", body, segment("Because", 1))
    endpoint, call = r.call()
    assert endpoint == "chat"
    assert call == {"model": "m", "keep_alive": "5m", "options": {"seed": 1}, "stream": True,
                    "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Why?", "images": ["aGk="]},
                                 {"role": "assistant", "content": "Because"}]}
    assert r.translate(chat_record(" it")) == {"model": "m", "created_at": "t",
                                               "response": " it", "done": False}


def test_raw_generate_is_continued_raw():
    body = {"model": "m", "prompt": "Once ", "raw": True}
    endpoint, call = plan("generate", body, segment("upon", 1)).call()
    assert endpoint == "generate" and call["prompt"] == "Once upon" and call["raw"]


def test_the_final_record_counts_the_whole_answer():
    r = plan("chat", {"model": "m", "messages": []}, segment("a b c", 3))
    final = r.translate({**chat_record(""), "done": True, "done_reason": "stop",
                         "total_duration": 1_000, "prompt_eval_count": 10,
                         "prompt_eval_duration": 100, "eval_count": 5, "eval_duration": 500})
    assert final["eval_count"] == 8 and final["prompt_eval_count"] == 7
    assert final["total_duration"] == 1_000 + 2_000_000_000  # the lost call: 10 s → 12 s
    assert final["prompt_eval_duration"] == 100 + 500_000_000  # to its first record
    assert final["eval_duration"] == 500 + 1_000_000_000  # its first to its last record
    assert final[MARKER] == 1 and final["done_reason"] == "stop"


def test_a_second_carry_over_adds_to_the_first():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    first = plan("chat", body, segment("a", 1))
    second = plan("chat", body, segment(" b", 2), prior=first)
    assert (second.text, second.tokens, second.resumes, second.nodes) == (
        "a b", 3, 2, ("node-a", "node-a"))
    assert second.call()[1]["messages"][-1]["content"] == "a b"
    assert second.lost["total_duration"] == 2 * first.lost["total_duration"]
    assert isinstance(carry_over("chat", body, second, segment("c", 1), "n",
                                 max_resumes=2), str)


def test_num_predict_is_the_whole_answers_budget():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}],
            "options": {"num_predict": 5}}
    r = plan("chat", body, segment("a b", 2))
    assert r.call()[1]["options"]["num_predict"] == 3 and not r.exhausted
    done = plan("chat", body, segment("a b c d e", 5))
    assert done.exhausted
    final = done.final_record(0.0)
    assert final["done"] and final["done_reason"] == "length" and final["eval_count"] == 5
    assert final["message"] == {"role": "assistant", "content": ""}


def test_output_without_text_is_asked_for_again_and_not_counted():
    body = {"model": "m", "prompt": "p", "options": {"num_predict": 4}}
    r = plan("generate", body, segment("", 2))
    endpoint, call = r.call()
    assert endpoint == "generate" and call["prompt"] == "p" and call["options"]["num_predict"] == 4
    final = r.translate({"response": "", "done": True, "eval_count": 4})
    assert final["eval_count"] == 4


def test_what_is_not_carried_over():
    chat = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    reasons = [
        carry_over("chat", chat, None, segment("x", 1, thinking=True), "n", max_resumes=2),
        carry_over("chat", chat, None, segment("", 1, tool_calls=True), "n", max_resumes=2),
        carry_over("chat", {**chat, "format": "json"}, None, segment("{", 1), "n",
                   max_resumes=2),
        carry_over("generate", {"model": "m", "prompt": "p", "suffix": "s"}, None,
                   segment("x", 1), "n", max_resumes=2),
        carry_over("generate", {"model": "m", "prompt": "p", "context": [1, 2]}, None,
                   segment("x", 1), "n", max_resumes=2),
        carry_over("chat", chat, None, segment("x", 1), "n", max_resumes=0),
        carry_over("embed", {"model": "m"}, None, segment("x", 1), "n", max_resumes=2),
    ]
    assert all(isinstance(r, str) and r for r in reasons), reasons
