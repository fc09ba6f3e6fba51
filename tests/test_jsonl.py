"""One JSONL reader for eval, SFT and teacher prompts: errors name file:line."""

import pytest

from vnmini.errors import VnminiError
from vnmini.jsonl import iter_jsonl
from vnmini.training.sft import load_conversations


def test_iter_jsonl_skips_blanks_and_names_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"b": "hòa"}\n', encoding="utf-8")
    assert list(iter_jsonl(p)) == [(f"{p}:1", {"a": 1}), (f"{p}:4", {"b": "hòa"})]
    p.write_text('{"a": 1}\n{broken\n', encoding="utf-8")
    with pytest.raises(VnminiError, match=r"a\.jsonl:2: invalid JSON"):
        list(iter_jsonl(p))
    p.write_bytes(b'{"a": "\xff\xfe"}\n')
    with pytest.raises(VnminiError, match="not UTF-8"):
        list(iter_jsonl(p))


def test_sft_reader_uses_line_numbers(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
                 '{"messages": []}\n', encoding="utf-8")
    with pytest.raises(VnminiError, match=r"c\.jsonl:2: needs a non-empty"):
        load_conversations(p)
