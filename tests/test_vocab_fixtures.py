"""Real tokenizers, from the vocab-only GGUFs llama.cpp ships (``vendor/llama.cpp/models/ggml-vocab-*.gguf``
in the llama-cpp-python sdist, fetched with pip into the user cache): vnmini's rebuilt tokenizer
(GPT-2, Llama-3, Qwen2 vocabularies) and llama.cpp's own behind vnmini (Llama-2 SPM, Phi-3, Gemma-4)
must give llama.cpp's ids on Vietnamese text, and bits-per-byte byte counts that cover the text."""

from __future__ import annotations

import unicodedata

import pytest
from conftest import VI_SAMPLE

TEXTS = [*VI_SAMPLE.splitlines(), "  12345 số\n\nxuống  dòng\t😀 I'm OK", unicodedata.normalize("NFD", "Hoà bình")]


def _llama(path):
    from llama_cpp import Llama

    return Llama(str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2", "starcoder"])
def test_rebuilt_tokenizer_equals_llama_cpp(vocab_dir, name):
    import gguf

    from vnmini.text.gguf_vocab import tokenizer_from_gguf

    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok = tokenizer_from_gguf(gguf.GGUFReader(str(path)), source=str(path))
    ref = _llama(path)
    assert tok.pre_tokenizer_name == name
    for text in TEXTS:
        norm = tok.normalize(text)
        assert tok.encode(text) == ref.tokenize(norm.encode(), add_bos=False, special=True), norm
        assert int(tok.token_bytes[tok.encode(text)].sum()) == len(norm.encode())


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "gemma-4"])
def test_llama_cpp_tokenizer_behind_vnmini(vocab_dir, name):
    from vnmini.text.llamacpp_tokenizer import LlamaCppTokenizer

    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    ref = _llama(path)
    tok = LlamaCppTokenizer(_llama(path), source=str(path))
    assert tok.eos_id is not None and tok.eos_id in tok.stop_ids
    for text in TEXTS:
        norm = tok.normalize(text)
        ids = tok.encode(text)
        assert ids == ref.tokenize(norm.encode(), add_bos=False, special=True)
        # every byte of the text is counted once; SentencePiece may add one prefix space
        assert 0 <= int(tok.token_bytes[ids].sum()) - len(norm.encode()) <= 1, norm
        assert tok.decode(ids).strip() == norm.strip()
