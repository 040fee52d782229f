"""Fuzzer finds that are fixed: kept as plain examples."""

from __future__ import annotations

import pytest
import requests

from olol.api.decoding import parse_json_body
from olol.api.errors import ApiError


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400,
                                    b"-" + b"9" * 5000])
def test_a_number_beyond_float64_is_a_400_not_a_500(number):
    # found on POST /api/show: 1e400 and 10**400 raised OverflowError (500); 5,000 digits
    # hit Python's int-from-text limit
    with pytest.raises(ApiError) as info:
        parse_json_body(b'{"model": "m", "x": ' + number + b"}", 1 << 20)
    assert info.value.status == 400
    assert info.value.message.startswith("json: cannot unmarshal number ")
    assert len(info.value.message) < 200


def test_integers_beyond_64_bits_within_float64_still_decode():
    assert parse_json_body(b'{"x": 18446744073709551616}', 1 << 20) == {"x": 2.0**64}
    assert parse_json_body(b'{"x": 1e308, "y": "\xff"}', 1 << 20) == {"x": 1e308,
                                                                     "y": "\ufffd"}


@pytest.mark.parametrize("path", ["/api/show", "/api/chat", "/v1/chat/completions",
                                  "/olol/v1/jobs"])
def test_huge_numbers_through_the_door(fuzz_env, path):
    live = fuzz_env.proxy("open")
    resp = requests.post(live.url + path, data=b'{"model": "llama3.2:1b", "x": 1e400}',
                         timeout=10)
    assert resp.status_code == 400, resp.text
