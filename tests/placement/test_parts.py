"""The pieces around place(): splitting groups into node calls, residency, learned times."""

from __future__ import annotations

import pytest

from olol.placement import NodeView, Unit, split_group
from olol.placement_learn import Timings


def test_split_group_single_calls_in_order():
    assert split_group(["a", "b"], {}, embed_merge=False, batch_size=8) == (
        Unit(("a",)), Unit(("b",)))


def test_split_group_coalesced_requests_ride_together():
    units = split_group(["a", "b", "c", "d"], {"k": ["a", "c"]}, embed_merge=False, batch_size=8)
    assert units == (Unit(("a", "c"), "coalesced"), Unit(("b",)), Unit(("d",)))


def test_split_group_embeds_merge_in_bounded_calls():
    ids = [f"e{i}" for i in range(9)]
    units = split_group(ids, {}, embed_merge=True, batch_size=1)
    assert [u.ids for u in units] == [tuple(ids[0:4]), tuple(ids[4:8]), (ids[8],)]
    assert [u.mode for u in units] == ["embed_merge", "embed_merge", "single"]


def test_effective_resident_trims_lru_but_keeps_running_models():
    n = NodeView("n", resident=(("a", 1.0), ("b", 2.0), ("c", 3.0)), capacity=2,
                 busy={"a": 1})
    assert n.effective_resident() == (("a", 1.0), ("c", 3.0))
    full = NodeView("n", resident=(("a", 1.0), ("b", 2.0)), capacity=1, busy={"a": 1})
    assert full.effective_resident() == (("a", 1.0),)


def _final(load_s=0.0, total_s=1.0, tokens=10, eval_s=0.5):
    return {"done": True, "load_duration": int(load_s * 1e9),
            "total_duration": int(total_s * 1e9), "eval_count": tokens,
            "eval_duration": int(eval_s * 1e9)}


def test_timings_learn_from_final_records():
    t = Timings(alpha=0.5)
    assert t.load_s("n1", "m") is None
    t.note("n1", "m", _final(load_s=2.0, total_s=3.0, tokens=20, eval_s=0.5))
    assert t.load_s("n1", "m") == pytest.approx(2.0)
    assert t.service_s("n1", "m") == pytest.approx(1.0)
    assert t.tokens_per_s("n1", "m") == pytest.approx(40.0)
    # a warm call (no load) updates the service time, not the load time
    t.note("n1", "m", _final(load_s=0.001, total_s=2.0))
    assert t.load_s("n1", "m") == pytest.approx(2.0)
    assert t.service_s("n1", "m") == pytest.approx(1.5, rel=1e-2)


def test_timings_fall_back_to_other_nodes_then_nothing():
    t = Timings()
    t.note("n1", "m", _final(load_s=2.0))
    t.note("n2", "m", _final(load_s=4.0))
    load, _ = t.for_node("n3")
    assert load["m"] == pytest.approx(3.0)
    assert "other" not in load
    own, _ = t.for_node("n1")
    assert own["m"] == pytest.approx(2.0)


@pytest.mark.parametrize("record", [None, "x", {}, {"load_duration": -1},
                                    {"load_duration": True}, {"total_duration": float("nan")}])
def test_timings_ignore_what_is_not_a_duration(record):
    t = Timings()
    t.note("n", "m", record)
    assert (t.load_s("n", "m"), t.service_s("n", "m"), t.tokens_per_s("n", "m")) == (
        None, None, None)


def test_timings_are_bounded():
    t = Timings(max_keys=3)
    for i in range(5):
        t.note(f"n{i}", "m", _final(load_s=1.0))
    assert t.load_s("n0", "m") is None and t.load_s("n4", "m") == pytest.approx(1.0)
