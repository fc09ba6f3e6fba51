"""The tokenizer inside a GGUF: write vnmini's byte-level BPE, and read it back.

llama.cpp's ``gpt2`` tokenizer model is byte-level BPE: the token strings are
stored in their byte-level (GPT-2 printable) form, merges as ``"a b"`` strings,
and the pre-tokenizer is chosen by name (``tokenizer.ggml.pre``). vnmini's
tokenizers are trained with a pre-tokenizer identical to one llama.cpp knows
(``gpt-2`` or ``qwen2``), so the file tokenizes exactly like
:class:`vnmini.tokenizer.VnTokenizer` — :mod:`vnmini.export.gguf_verify`
proves it on every export.

    add_tokenizer_metadata(writer, tok, vocab_size=cfg.vocab_size)
    tok = tokenizer_from_gguf(gguf.GGUFReader("model.gguf"))   # a VnTokenizer

Reading back rebuilds a ``tokenizers.Tokenizer`` from the standard keys alone
(tokens, types, merges, pre), so any ``gpt2``-model GGUF with a ``gpt-2`` or
``qwen2`` pre-tokenizer opens; for vnmini files the rebuilt tokenizer's hash
must equal the one recorded at export (``vnmini.tokenizer.hash``).
"""

from __future__ import annotations

from typing import Any

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models

from vnmini.errors import VnminiError
from vnmini.tokenizer import BOS_TOKEN, CHAT_TEMPLATE, EOS_TOKEN, VnTokenizer

KEY_TOKENIZER_HASH = "vnmini.tokenizer.hash"
KEY_TONE_STYLE = "vnmini.tokenizer.tone_style"
SUPPORTED_PRE = ("gpt-2", "qwen2")


def add_tokenizer_metadata(writer: gguf.GGUFWriter, tok: VnTokenizer, vocab_size: int) -> dict[str, Any]:
    """Write the ``tokenizer.*`` keys. Returns facts for the report (padding, specials).

    ``vocab_size`` is the model's embedding rows; rows past the tokenizer's
    last id get ``[PAD{i}]`` tokens of type UNUSED, as llama.cpp's converter does.
    """
    if tok.pre_tokenizer_name not in SUPPORTED_PRE:
        raise VnminiError(
            f"{tok.source}: pre-tokenizer {tok.pre_tokenizer_name!r} has no llama.cpp twin; "
            f"retrain the tokenizer with pre one of {SUPPORTED_PRE}."
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
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    if tok.im_end_id is not None:
        # End of a chat turn: llama.cpp apps stop generating here (end-of-generation set).
        writer.add_eot_token_id(tok.im_end_id)
    # Plain text generation starts with BOS (as vnmini does); the chat template
    # writes its own BOS and llama.cpp then adds none.
    writer.add_add_bos_token(True)
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
    if model.get("type") != "BPE":
        raise VnminiError(f"tokenizer model is {model.get('type')!r}; GGUF export supports byte-level BPE only.")
    out = []
    for m in model.get("merges", []):
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        out.append(f"{a} {b}")
    return out


# ------------------------------------------------------------------ reading
def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as a Python object (str, number, bool or list)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def tokenizer_from_gguf(reader: gguf.GGUFReader, source: str = "<gguf>") -> VnTokenizer:
    """Rebuild a :class:`VnTokenizer` from a GGUF's ``tokenizer.*`` keys."""
    from vnmini.tokenizer_train import build_pre_tokenizer

    model = field_value(reader, "tokenizer.ggml.model")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre not in SUPPORTED_PRE:
        raise VnminiError(
            f"{source}: tokenizer {model!r} with pre {pre!r}; vnmini opens byte-level BPE GGUFs with pre "
            f"{' or '.join(SUPPORTED_PRE)} (export with `vnmini export gguf`)."
        )
    tokens: list[str] = field_value(reader, "tokenizer.ggml.tokens")
    types: list[int] = field_value(reader, "tokenizer.ggml.token_type")
    merges: list[str] = field_value(reader, "tokenizer.ggml.merges", [])
    if not tokens or not types or len(tokens) != len(types):
        raise VnminiError(f"{source}: tokenizer.ggml.tokens/token_type missing or inconsistent; re-export the file.")
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty != gguf.TokenType.UNUSED}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    hf.pre_tokenizer = build_pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False)
                for i, ty in enumerate(types) if ty == gguf.TokenType.CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, ty in enumerate(types) if ty == gguf.TokenType.USER_DEFINED]
    if specials:
        hf.add_special_tokens(specials)
    if user:
        hf.add_tokens(user)
    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    if bos is None or eos is None or tokens[bos] != BOS_TOKEN or tokens[eos] != EOS_TOKEN:
        raise VnminiError(f"{source}: BOS/EOS tokens are not {BOS_TOKEN}/{EOS_TOKEN}; not a vnmini tokenizer.")
    tok = VnTokenizer(
        hf,
        chat_template=field_value(reader, "tokenizer.chat_template") or CHAT_TEMPLATE,
        pre_tokenizer_name=pre,
        tone_style=field_value(reader, KEY_TONE_STYLE, "new"),
        source=source,
    )
    want = field_value(reader, KEY_TOKENIZER_HASH)
    if want is not None and want != tok.hash:
        raise VnminiError(f"{source}: the tokenizer rebuilt from the file (hash {tok.hash}) differs from the "
                          f"exported one ({want}); the file is damaged, re-export it.")
    return tok
