"""Read the tokenizer stored in a GGUF back into a :class:`~vnmini.text.tokenizer.VnTokenizer`.

Reading rebuilds a ``tokenizers.Tokenizer`` from the standard keys alone (tokens,
types, merges, pre, special ids, add-BOS flag), so any ``gpt2``-model GGUF whose pre
is ``gpt-2``, ``qwen2``, ``llama-bpe`` or ``starcoder`` opens (anything else raises
:class:`NotRebuildable`: it runs on llama.cpp's own tokenizer); for vnmini files
the rebuilt tokenizer's hash must equal the one recorded at export
(``vnmini.tokenizer.hash``). Writing is
:mod:`vnmini.export.gguf_tokenizer`.

    import gguf
    tok = tokenizer_from_gguf(gguf.GGUFReader("model.gguf"), source="model.gguf")
    field_value(reader, "tokenizer.ggml.pre")     # 'qwen2'
"""

from __future__ import annotations

from typing import Any

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models

from vnmini.errors import VnminiError
from vnmini.text.pretokenizers import PRE_TOKENIZERS
from vnmini.text.specials import VNMINI_SPECIALS, Specials
from vnmini.text.tokenizer import CHAT_TEMPLATE, VnTokenizer

KEY_TOKENIZER_HASH = "vnmini.tokenizer.hash"
KEY_TONE_STYLE = "vnmini.tokenizer.tone_style"
SUPPORTED_PRE = PRE_TOKENIZERS  # the byte-level pre-tokenizers vnmini can rebuild exactly


class NotRebuildable(VnminiError):
    """The GGUF's tokenizer is not one vnmini rebuilds: use llama.cpp's own (``LlamaCppTokenizer``)."""


def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as a Python object (str, number, bool or list)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def tokenizer_from_gguf(reader: gguf.GGUFReader, source: str = "<gguf>") -> VnTokenizer:
    """Rebuild a :class:`VnTokenizer` from a GGUF's ``tokenizer.*`` keys."""
    from vnmini.text.pretokenizers import build_pre_tokenizer

    model = field_value(reader, "tokenizer.ggml.model")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre not in SUPPORTED_PRE:
        raise NotRebuildable(
            f"{source}: tokenizer {model!r} with pre {pre!r}; vnmini rebuilds byte-level BPE GGUFs with pre "
            f"{', '.join(SUPPORTED_PRE)} (others run on llama.cpp's own tokenizer)."
        )
    tokens: list[str] = field_value(reader, "tokenizer.ggml.tokens")
    types: list[int] = field_value(reader, "tokenizer.ggml.token_type")
    merges: list[str] = field_value(reader, "tokenizer.ggml.merges", [])
    if not tokens or not types or len(tokens) != len(types):
        raise VnminiError(f"{source}: tokenizer.ggml.tokens/token_type missing or inconsistent; re-export the file.")
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty != gguf.TokenType.UNUSED}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    # llama.cpp's llama-bpe looks whole words up in the vocabulary before merging (as Llama-3's tokenizer.json does)
    hf = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre == "llama-bpe"))
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
    def token(key: str) -> str | None:
        i = field_value(reader, key)
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise VnminiError(f"{source}: {key} = {i} is past the vocabulary of {len(tokens)}; the file is damaged.")
        return tokens[int(i)]

    eot = token("tokenizer.ggml.eot_token_id")
    specials = Specials(bos=token("tokenizer.ggml.bos_token_id"), eos=token("tokenizer.ggml.eos_token_id"),
                        pad=token("tokenizer.ggml.padding_token_id"), unk=token("tokenizer.ggml.unknown_token_id"),
                        eot=(eot,) if eot else (),
                        add_bos=bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)))
    tok = VnTokenizer(
        hf,
        chat_template=field_value(reader, "tokenizer.chat_template") or (
            CHAT_TEMPLATE if specials == VNMINI_SPECIALS else ""),
        pre_tokenizer_name=pre,
        tone_style=field_value(reader, KEY_TONE_STYLE, "new"),
        source=source,
        specials=specials,
    )
    want = field_value(reader, KEY_TOKENIZER_HASH)
    if want is not None and want != tok.hash:
        raise VnminiError(f"{source}: the tokenizer rebuilt from the file (hash {tok.hash}) differs from the "
                          f"exported one ({want}); the file is damaged, re-export it.")
    return tok
