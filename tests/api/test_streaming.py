import json

from olol.api.streaming import ndjson_line, ollama_stream_error_line


def test_ndjson_line_is_one_compact_line():
    line = ndjson_line({"response": "a\nb", "done": False, "n": [1, 2]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b": " not in line and b", " not in line
    assert json.loads(line) == {"response": "a\nb", "done": False, "n": [1, 2]}


def test_unicode_is_kept_as_utf8():
    assert json.loads(ndjson_line({"response": "héllo ✓"}).decode("utf-8")) == {
        "response": "héllo ✓"
    }


def test_error_line():
    assert ollama_stream_error_line("boom") == b'{"error":"boom"}\n'
