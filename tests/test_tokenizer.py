"""Tokenizer training: exact round-trip of normalized text, llama.cpp pre-tokenizer names, save/load, fertility, CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnmini.errors import VnminiError
from vnmini.text.normalization import ONSETS, RHYMES, TONES, normalize, place_tone
from vnmini.text.pretokenizers import QWEN2_REGEX
from vnmini.text.tokenizer import VnTokenizer
from vnmini.text.tokenizer_train import tokenizer_fertility, train_tokenizer

SAMPLE_PATH = __import__("vnmini.assets").assets.asset_path("vi_sample.txt")
TEXT = SAMPLE_PATH.read_text(encoding="utf-8")

syllable = st.builds(lambda o, r, t: place_tone(o + r, t), st.sampled_from(ONSETS), st.sampled_from(RHYMES),
                     st.sampled_from(TONES))
vi_text = st.lists(
    st.one_of(syllable, syllable.map(str.capitalize),
              st.sampled_from([" ", "  ", "\n", "\n\n", ", ", ". ", "123", "🐱", "\t", "'s", "ABC"]))
).map("".join)


@pytest.fixture(scope="module", params=["qwen2", "gpt-2"])
def tok(request):
    return train_tokenizer([TEXT], vocab_size=600, pre=request.param, is_text=True)


@settings(max_examples=150, deadline=None)
@given(st.one_of(vi_text, st.text(max_size=40)))
def test_roundtrip_every_normalized_string(tok, s):
    s = normalize(s)
    assert tok.decode(tok.encode(s), skip_special=False) == s


def test_specials_and_config(tok, tmp_path):
    assert [tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2, 3, 4]
    assert tok.vocab_size <= 600
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["vnmini_pre_tokenizer"] == tok.pre_tokenizer_name and "im_start" in cfg["chat_template"]
    again = VnTokenizer.load(tmp_path)
    assert again.hash == tok.hash and again.encode("hoà bình") == tok.encode("hòa bình")
    data = json.loads(again.hf.to_str())
    assert data["normalizer"] is None  # llama.cpp runs none; vnmini normalizes in Python
    if tok.pre_tokenizer_name == "qwen2":
        assert data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_REGEX
        assert tok.encode("2024") == [tok.token_to_id("2")] + [tok.token_to_id("0"), tok.token_to_id("2"),
                                                               tok.token_to_id("4")]


def test_nfd_input_costs_no_extra_tokens(tok):
    import unicodedata

    s = "Người lao động được hòa giải"
    assert tok.encode(unicodedata.normalize("NFD", s)) == tok.encode(s)


def test_fertility_and_seeding():
    plain = train_tokenizer([TEXT], vocab_size=700, is_text=True, seed_weight=0)
    seeded = train_tokenizer([TEXT], vocab_size=700, is_text=True, seed_weight=0.5)
    r = tokenizer_fertility(plain, [TEXT])
    assert r["syllables"] > 900 and 1.0 < r["tokens_per_syllable"] < 3.0 and r["bytes_per_token"] > 1.5
    assert r["unknown_share"] == 0 and 0 <= r["byte_fallback_share"] < 0.2
    assert seeded.hash != plain.hash
    # Raw hf tokenizers (other vendors' tokenizer.json) are measured on the same normalized text.
    assert tokenizer_fertility(plain.hf, [TEXT])["tokens"] == r["tokens"]


def test_bad_arguments():
    with pytest.raises(VnminiError, match="--pre"):
        train_tokenizer([TEXT], pre="llama-bpe", is_text=True)
    with pytest.raises(VnminiError, match="--vocab-size"):
        train_tokenizer([TEXT], vocab_size=100, is_text=True)


def test_cli_train_and_eval(tmp_path, cli):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    code, out, err = cli("tokenizer", "train", tmp_path / "c.txt", "--out", tmp_path / "tok", "--vocab-size", "600")
    assert code == 0, err
    code, out, err = cli("tokenizer", "eval", tmp_path / "tok", tmp_path / "c.txt", tmp_path / "tok" / "tokenizer.json")
    assert code == 0, err
    assert out.count("| ") > 10 and "tokens/syllable" in out
    code, out, err = cli("tokenizer", "train", tmp_path / "nothing", "--out", tmp_path / "tok2")
    assert code == 2 and err.count("\n") == 1 and "nothing" in err
