"""The tokenizer inside a GGUF: write a byte-level BPE (``gpt2`` model) or a
SentencePiece-style BPE (``llama`` model); reading back is :mod:`vnmini.text.gguf_vocab`.

llama.cpp's ``gpt2`` tokenizer model is byte-level BPE: the token strings are
stored in their byte-level (GPT-2 printable) form, merges as ``"a b"`` strings,
and the pre-tokenizer is chosen by name (``tokenizer.ggml.pre``): the source's
twin, found by behaviour (:mod:`vnmini.text.pretokenizers`). Its ``llama`` model is
SentencePiece: tokens with ``▁``, a score per token (here minus the rank of the
merge that makes it), byte tokens ``<0xNN>`` for fallback, and the space prefix.
Either way the source's BOS/EOS/end-of-turn ids, add-BOS rule and chat template go
in, and :mod:`vnmini.export.gguf_verify` proves on every export that llama.cpp
tokenizes the file exactly like the source (a file that doesn't is never kept).

    add_tokenizer_metadata(writer, tok, vocab_size=cfg.vocab_size)
"""

from __future__ import annotations

from typing import Any

import gguf
from tokenizers import Tokenizer

from vnmini.errors import VnminiError
from vnmini.text.gguf_vocab import KEY_TOKENIZER_HASH, KEY_TONE_STYLE, SUPPORTED_PRE
from vnmini.text.pretokenizers import describe_pre_tokenizer
from vnmini.text.tokenizer import VnTokenizer


def add_tokenizer_metadata(writer: gguf.GGUFWriter, tok: VnTokenizer, vocab_size: int) -> dict[str, Any]:
    """Write the ``tokenizer.*`` keys. Returns facts for the report (padding, specials).

    ``vocab_size`` is the model's embedding rows; rows past the tokenizer's
    last id get ``[PAD{i}]`` tokens of type UNUSED, as llama.cpp's converter does.
    """
    if tok.vocab_size > vocab_size:
        raise VnminiError(
            f"{tok.source}: tokenizer has {tok.vocab_size} tokens but the model has {vocab_size} embedding rows; "
            "the tokenizer does not belong to this checkpoint."
        )
    if tok.style == "sentencepiece":
        return _add_sentencepiece(writer, tok, vocab_size)
    if tok.pre_tokenizer_name not in SUPPORTED_PRE:
        raise VnminiError(
            f"{tok.source}: its pre-tokenizer ({describe_pre_tokenizer(tok.hf)}) splits text unlike any llama.cpp "
            f"pre-tokenizer ({', '.join(SUPPORTED_PRE)}), so llama.cpp would tokenize the GGUF differently; "
            "nothing was written. Use a tokenizer with one of those, or export ONNX instead."
        )
    data = tok.hf.get_vocab(with_added_tokens=True)
    by_id: dict[int, str] = {i: t for t, i in data.items()}
    added = {a.content: a for a in tok.hf.get_added_tokens_decoder().values()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if added[t].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    merges = _merges(tok.hf)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok.pre_tokenizer_name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    _add_specials(writer, tok)
    return {
        "tokens": vocab_size,
        "tokenizer_tokens": tok.vocab_size,
        "padding_tokens": vocab_size - tok.vocab_size,
        "merges": len(merges),
        "pre": tok.pre_tokenizer_name,
        "control_tokens": sum(1 for x in types if x == gguf.TokenType.CONTROL),
        "hash": tok.hash,
    }


def _add_specials(writer: gguf.GGUFWriter, tok: VnTokenizer) -> None:
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    if tok.eot_id is not None:
        # End of a chat turn: llama.cpp apps stop generating here (end-of-generation set).
        writer.add_eot_token_id(tok.eot_id)
    # The source's own BOS rule (vnmini: BOS first; Qwen2: none). A chat template that
    # writes its own BOS gets none added by llama.cpp, which renders then tokenizes.
    writer.add_add_bos_token(tok.add_bos)
    writer.add_add_eos_token(False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)
    writer.add_string(KEY_TOKENIZER_HASH, tok.hash)
    writer.add_string(KEY_TONE_STYLE, tok.tone_style)


def _add_sentencepiece(writer: gguf.GGUFWriter, tok: VnTokenizer, vocab_size: int) -> dict[str, Any]:
    """A ``▁``/byte-fallback BPE as llama.cpp's ``llama`` (SentencePiece) tokenizer model.

    llama.cpp's SPM tokenizer merges the adjacent pair whose joined text has the highest
    score; a BPE applies its merges in rank order. Scoring each token by minus the rank
    of the merge that makes it turns one into the other; whether it does for this
    vocabulary is not assumed — the verify report compares llama.cpp's ids with ours and
    a file that tokenizes differently is never kept.
    """
    import json

    spec = json.loads(tok.hf.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise VnminiError(f"{tok.source}: a SentencePiece {model.get('type')} model; vnmini writes BPE ones only "
                          "(convert this model with llama.cpp's convert_hf_to_gguf.py).")
    rank: dict[str, int] = {}
    for i, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, i)
    added = {a.content: a for a in tok.hf.get_added_tokens_decoder().values()}
    by_id = {i: t for t, i in tok.hf.get_vocab(with_added_tokens=True).items()}
    unk = model.get("unk_token")
    tokens, scores, types = [], [], []
    floor = -float(len(rank) + 1)
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            scores.append(floor)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(t)
        scores.append(-float(rank[t]) if t in rank else floor)
        if t in added:
            types.append(gguf.TokenType.CONTROL if added[t].special else gguf.TokenType.USER_DEFINED)
        elif t == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    # HF's Prepend("▁") normalizer is llama.cpp's space prefix (also after special tokens).
    writer.add_add_space_prefix("Prepend" in json.dumps(spec.get("normalizer")))
    if unk is not None and unk in tok.hf.get_vocab():
        writer.add_unk_token_id(tok.hf.token_to_id(unk))
    _add_specials(writer, tok)
    return {"tokens": vocab_size, "tokenizer_tokens": tok.vocab_size, "padding_tokens": vocab_size - tok.vocab_size,
            "merges": len(rank), "pre": "sentencepiece", "hash": tok.hash,
            "control_tokens": sum(1 for x in types if x == gguf.TokenType.CONTROL)}


def _merges(hf: Tokenizer) -> list[str]:
    import json

    model = json.loads(hf.to_str()).get("model", {})
    if model.get("type") != "BPE":  # e.g. a WordPiece or Unigram tokenizer.json
        raise VnminiError(f"tokenizer model is {model.get('type')!r}; GGUF export supports byte-level BPE only.")
    out = []
    for m in model.get("merges", []):
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        out.append(f"{a} {b}")
    return out
