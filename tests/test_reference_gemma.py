"""A real foreign GGUF through every reading verb: Gemma-3-270M Q4_K_M (SentencePiece, 262k vocab,
its own BOS/EOS/end-of-turn), opened on llama.cpp's own tokenizer with vnmini's normalization.

Opt-in (``VNMINI_GEMMA=1``): the file is a 250 MB download under Gemma's terms, so default CI
never fetches it (:func:`vnmini.data.fetch.fetch_gemma_gguf` puts it in the user cache).
"""

from __future__ import annotations

import json
import os
import unicodedata

import pytest
from conftest import VI_SAMPLE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VNMINI_GEMMA") != "1",
                       reason="opt-in: set VNMINI_GEMMA=1 to download Gemma-3-270M (Gemma terms) and run"),
]


@pytest.fixture(scope="module")
def gemma():
    from vnmini.data.fetch import fetch_gemma_gguf

    return fetch_gemma_gguf()


def test_gemma_opens_evaluates_and_generates(gemma, tmp_path, cli):
    import llama_cpp

    from vnmini.runtime.loader import load
    from vnmini.text.normalization import normalize

    gen = load(gemma)
    tok = gen.tokenizer
    assert tok.style == "llama.cpp" and tok.bos_id == 2 and tok.add_bos
    # Same ids as llama.cpp on normalized text, NFD input included (normalization runs first).
    ref = llama_cpp.Llama(str(gemma), vocab_only=True, verbose=False)
    for line in VI_SAMPLE.splitlines():
        nfd = unicodedata.normalize("NFD", line)
        assert tok.encode(nfd) == ref.tokenize(normalize(line).encode(), add_bos=False, special=True)
    # Bits per byte counted on the normalized UTF-8 text.
    text = tmp_path / "t.txt"
    text.write_text(VI_SAMPLE * 3, encoding="utf-8")
    code, out, err = cli("eval", gemma, "--text", text, "--context", "256", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert 0.2 < r["bpb"] < 1.5, r
    # Every byte of the normalized text is scored once (at most one SentencePiece prefix space more).
    want = len(normalize(VI_SAMPLE * 3).strip().encode())
    assert abs(r["bytes"] - want) <= 2, (r["bytes"], want)
    code, out, err = cli("generate", gemma, "Điều 1. Phạm vi điều chỉnh", "-n", "12", "-t", "0")
    assert code == 0 and out.strip(), err
