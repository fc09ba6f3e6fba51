"""A very long single-line document is normalized and tokenized in bounded pieces: the same ids, the same
shards and the same trained tokenizer as in one piece, still one document, and bounded memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

import vnmini.data.corpus as corpus
from vnmini.data.corpus import read_documents, split_text
from vnmini.data.shards import ShardReader, prepare_shards
from vnmini.text.normalization import generate_syllables, normalize
from vnmini.text.tokenizer_train import train_tokenizer

# Everything a cut could break: NFD tone marks, old-style tones, odd spaces, CRLF, blank runs,
# punctuation before newlines (qwen2 joins ".\n"), digits next to letters, contractions, ZWJ emoji,
# zero-width characters, and special-token strings.
_JUNK = ["'s", "don't", ",", ".", "!?", "  ", "\n", "\n\n\n", " \n", "\t", "🐱", "👨\u200d👩", "\r\n", "(", "—",
         "x²", "a\u0301", "\u200b", "<s>", "<|im_end|>", "...", "\u00a0", "A1b2", "hoà", "thuỷ", ".\n"]


def _text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    syl = list(generate_syllables("new"))[:2000]
    return "".join((rng.choice(_JUNK) if rng.random() < 0.2 else rng.choice(syl)) + (" " if rng.random() < 0.7 else "")
                   for _ in range(n_words))


@pytest.fixture(scope="module")
def text():
    return _text(60_000)


@pytest.mark.parametrize("pre", ["gpt-2", "qwen2"])
def test_pieces_give_the_same_ids_and_normalization(text, pre):
    tok = train_tokenizer([text[:40_000]], vocab_size=700, pre=pre, is_text=True)
    norm = normalize(text)
    whole = tok.encode_batch([norm])[0]
    for bound in (300, 5_000, 77_777):
        pieces = list(split_text(norm, bound))
        assert "".join(pieces) == norm and max(map(len, pieces)) <= bound and len(pieces) > len(norm) // bound
        assert [i for ids in tok.encode_batch(pieces) for i in ids] == whole, bound
        assert "".join(normalize(p) for p in split_text(text, bound)) == norm, bound


def test_split_text_fallbacks_keep_special_tokens_whole():
    assert list(split_text("abc123def456", 5)) == ["abc", "123", "def", "456"]  # letter/digit: a boundary too
    pieces = list(split_text("xxxxxx<|im_end|>yyyyyy" * 3, 10))
    assert "".join(pieces) == "xxxxxx<|im_end|>yyyyyy" * 3 and "<|im_end|>" in pieces
    assert list(split_text("", 5)) == [""] and list(split_text("short", 5)) == ["short"]


def _record_encode(monkeypatch, tok) -> list[int]:
    seen: list[int] = []
    real = tok.encode_batch

    def encode_batch(texts):
        seen.extend(len(t) for t in texts)
        return real(texts)

    monkeypatch.setattr(tok, "encode_batch", encode_batch)
    return seen


def test_prepare_shards_long_document_same_shards(tmp_path, monkeypatch, text):
    tok = train_tokenizer([text[:40_000]], vocab_size=700, is_text=True)
    long_doc = text * 4  # ~2 MB on one line
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                              for t in ["Xin chào.", long_doc, "Điều 1.", long_doc[:70_000], "Hết."]),
                                      encoding="utf-8")  # fmt: skip
    (tmp_path / "b.txt").write_text(long_doc.replace("\n", " ").replace("\r", " "), encoding="utf-8")
    inputs = [tmp_path / "a.jsonl", tmp_path / "b.txt"]

    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 10**9)  # one piece per document: the reference
    ref = prepare_shards(inputs, tok, tmp_path / "ref", val_fraction=0.2, shard_tokens=1 << 16, progress=False)
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 20_000)
    seen = _record_encode(monkeypatch, tok)
    got = prepare_shards(inputs, tok, tmp_path / "got", val_fraction=0.2, shard_tokens=1 << 16, progress=False)
    assert max(seen) <= 20_000 and len(seen) > 50  # the tokenizer never saw a long string
    assert got["splits"] == ref["splits"] and got["splits"]["train"]["documents"] == 5
    for f in ref["splits"]["train"]["files"] + ref["splits"]["val"]["files"]:
        assert (tmp_path / "got" / f["name"]).read_bytes() == (tmp_path / "ref" / f["name"]).read_bytes()
    # Still whole documents: BOS ... EOS around the long one, which decodes to the normalized text.
    docs = list(ShardReader(tmp_path / "got", "train").iter_documents())
    assert len(docs) == 5 and tok.decode(docs[1], skip_special=False) == normalize(long_doc)


def test_read_documents_normalizes_long_file_in_pieces(tmp_path, monkeypatch, text):
    path = tmp_path / "one.txt"
    path.write_text(text * 3, encoding="utf-8")
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 10**9)
    ref = list(read_documents([path]))
    seen: list[int] = []
    real = corpus.normalize

    def spy(t, style="new"):
        seen.append(len(t))
        return real(t, style)

    monkeypatch.setattr(corpus, "normalize", spy)
    monkeypatch.setattr(corpus, "_READ_BYTES", 4096)
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 10_000)
    assert list(read_documents([path])) == ref == [normalize(text * 3)]
    assert max(seen) <= 10_000 and len(seen) > 10


def test_tokenizer_training_sees_bounded_pieces(tmp_path, monkeypatch, text):
    import vnmini.text.tokenizer_train as tt

    path = tmp_path / "one.txt"
    path.write_text(text * 2, encoding="utf-8")
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 10**9)
    ref = train_tokenizer([path], vocab_size=600)

    seen: list[int] = []
    real_new_bpe = tt.new_bpe

    class Recording:
        def __init__(self, hf):
            self._hf = hf

        def train_from_iterator(self, it, trainer):
            def record():
                for t in it:
                    seen.append(len(t))
                    yield t

            return self._hf.train_from_iterator(record(), trainer=trainer)

        def __getattr__(self, name):
            return getattr(self._hf, name)

    monkeypatch.setattr(tt, "new_bpe", lambda pre: Recording(real_new_bpe(pre)))
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 8_000)
    got = train_tokenizer([path], vocab_size=600)
    assert max(seen) <= 8_000 and got.hash == ref.hash


_RSS = textwrap.dedent("""
    import resource, subprocess, sys
    subprocess.run([sys.executable, "-m", "vnmini.cli", *sys.argv[1:]], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
""")


def _peak_mb(*args) -> int:
    r = subprocess.run([sys.executable, "-c", _RSS, *map(str, args)], capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.split()[-1])


@pytest.fixture(scope="module")
def big_line(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("big")
    one_line = text.replace("\n", " ").replace("\r", " ")
    (d / "big.txt").write_text(one_line * (6_000_000 // len(one_line.encode()) + 1), encoding="utf-8")  # ~6 MB
    train_tokenizer([text[:40_000]], vocab_size=700, is_text=True).save(d / "tok")
    return d


def test_prepare_memory_bounded_on_a_long_line(big_line):
    # This ~6 MB line: 1043 MB before chunking (~120 bytes per byte: 50 MB took 5.9 GB), ~220 MB after.
    peak = _peak_mb("data", "prepare", big_line / "big.txt", "-t", big_line / "tok", "-o", big_line / "shards",
                    "--val-fraction", "0", "--no-progress")  # fmt: skip
    print(f"data prepare peak RSS {peak} MB")
    assert peak < 450, f"peak RSS {peak} MB"


def test_tokenizer_train_memory_bounded_on_a_long_line(big_line):
    peak = _peak_mb("tokenizer", "train", big_line / "big.txt", "--vocab-size", "600", "-o", big_line / "tok2")
    print(f"tokenizer train peak RSS {peak} MB")
    assert peak < 300, f"peak RSS {peak} MB"  # 560 MB before chunking, ~120 MB after
