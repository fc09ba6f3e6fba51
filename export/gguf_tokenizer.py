"""The tokenizer inside a GGUF: write vnmini's byte-level BPE (reading it back is
:mod:`vnmini.text.gguf_vocab`).

llama.cpp's ``gpt2`` tokenizer model is byte-level BPE: the token strings are
stored in their byte-level (GPT-2 printable) form, merges as ``"a b"`` strings,
and the pre-tokenizer is chosen by name (``tokenizer.ggml.pre``). vnmini's
tokenizers are trained with a pre-tokenizer identical to one llama.cpp knows
(``gpt-2`` or ``qwen2``), so the file tokenizes exactly like
:class:`vnmini.text.tokenizer.VnTokenizer` — :mod:`vnmini.export.gguf_verify`
proves it on every export.

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
    if tok.style != "byte-level":
        raise VnminiError(
            f"{tok.source}: a SentencePiece-style tokenizer (▁ and byte fallback); vnmini's GGUF export writes "
            "byte-level BPE only so far. Convert this model with llama.cpp's convert_hf_to_gguf.py, then use the "
            "GGUF with every vnmini verb."
        )
    if tok.pre_tokenizer_name not in SUPPORTED_PRE:
        raise VnminiError(
            f"{tok.source}: its pre-tokenizer ({describe_pre_tokenizer(tok.hf)}) splits text unlike any llama.cpp "
            f"pre-tokenizer ({', '.join(SUPPORTED_PRE)}), so llama.cpp would tokenize the GGUF differently; "
            "nothing was written. Use a tokenizer with one of those, or export ONNX instead."
        )
    if tok.vocab_size > vocab_size:
        raise VnminiError(
            f"{tok.source}: tokenizer has {tok.vocab_size} tokens but the model has {vocab_size} embedding rows; "
            "the tokenizer does not belong to this checkpoint."
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
    writer.add_chat_template(tok.chat_template)
    writer.add_string(KEY_TOKENIZER_HASH, tok.hash)
    writer.add_string(KEY_TONE_STYLE, tok.tone_style)
    return {
        "tokens": vocab_size,
        "tokenizer_tokens": tok.vocab_size,
        "padding_tokens": vocab_size - tok.vocab_size,
        "merges": len(merges),
        "pre": tok.pre_tokenizer_name,
        "control_tokens": sum(1 for x in types if x == gguf.TokenType.CONTROL),
        "hash": tok.hash,
    }


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
