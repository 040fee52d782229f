"""The agent's chunked-body decoder: records come out whole, however the bytes arrive."""

from __future__ import annotations

import random

import pytest

from olol.agent.ollama import ChunkedLines


def chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n" + trailer + b"\r\n"


RECORDS = [b'{"model":"m","response":"%d","done":false}' % i for i in range(40)]
RECORDS.append(b'{"model":"m","response":"","done":true,"eval_count":40}')


def decode(wire: bytes, splits: list[int], max_line: int = 1 << 20) -> tuple[list[bytes], ChunkedLines]:
    decoder = ChunkedLines(max_line)
    out: list[bytes] = []
    last = 0
    for cut in [*splits, len(wire)]:
        out.extend(decoder.feed(wire[last:cut]))
        last = cut
    return out, decoder


@pytest.mark.parametrize("seed", range(25))
def test_any_split_of_any_chunking_gives_the_records(seed):
    rng = random.Random(seed)
    body = b"".join(r + b"\n" for r in RECORDS)
    # chunk boundaries anywhere, including inside records and between "\r" and "\n"
    cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, 30)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    wire = chunked(pieces, trailer=b"X-Trailer: 1\r\n" if seed % 2 else b"")
    splits = sorted(rng.sample(range(1, len(wire)), rng.randint(0, 60)))
    out, decoder = decode(wire, splits)
    assert out == RECORDS
    assert decoder.finished and not decoder.extra and decoder.tail == b""


def test_one_record_per_chunk_comes_out_as_soon_as_its_chunk_is_complete():
    decoder = ChunkedLines(1 << 20)
    assert decoder.feed(b"8\r\n{\"a\":") == []  # half a record
    assert decoder.feed(b"1}\n\r\n") == [b'{"a":1}']
    assert decoder.feed(b"4\r\n{\"b\"\r\n") == []  # a record split over two chunks
    assert decoder.feed(b"4\r\n:2}\n\r\n") == [b'{"b":2}']
    decoder2 = ChunkedLines(1 << 20)
    wire = chunked([b'{"a":1}\n', b'{"b":22}\n', b'{"c":33}\n'])
    first = wire.index(b"9\r\n")
    assert decoder2.feed(wire[:first]) == [b'{"a":1}']
    end = wire.index(b"0\r\n\r\n")
    assert decoder2.feed(wire[first:end]) == [b'{"b":22}', b'{"c":33}']  # together
    assert not decoder2.finished
    assert decoder2.feed(wire[end:]) == [] and decoder2.finished


def test_blank_lines_and_crlf_endings_are_dropped_and_a_last_record_without_newline_is_kept():
    wire = chunked([b'{"a":1}\r\n\n\n{"b":2}\n', b'{"c":3}'])
    out, decoder = decode(wire, [5, 17])
    assert out == [b'{"a":1}', b'{"b":2}']
    assert decoder.finished and decoder.tail == b'{"c":3}'


@pytest.mark.parametrize("wire, message", [
    (b"zz\r\nabc\r\n", "bad chunk size"),
    (b"3\r\nabcXX", "missing CRLF"),
    (b"1" * 2000, "chunk size line too long"),
])
def test_malformed_framing_is_an_error(wire, message):
    with pytest.raises(ValueError, match=message):
        ChunkedLines(1 << 20).feed(wire)


def test_a_record_longer_than_the_limit_is_an_error_before_it_is_complete():
    decoder = ChunkedLines(100)
    with pytest.raises(ValueError, match="longer than 100"):
        decoder.feed(b"%x\r\n" % 200 + b"x" * 150)
