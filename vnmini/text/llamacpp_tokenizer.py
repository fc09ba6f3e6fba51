"""llama.cpp's own tokenizer for a GGUF vnmini can't rebuild exactly (Gemma, Llama-2,
Mistral, anything SentencePiece-style or with a pre-tokenizer vnmini doesn't rebuild),
behind the same interface as :class:`~vnmini.text.tokenizer.VnTokenizer`.

Everything vnmini adds stays: Vietnamese normalization before every encode, the file's
own chat template rendered in vnmini's bounded sandbox, BOS/EOS/end-of-turn ids and
the add-BOS rule read from llama.cpp, and per-token UTF-8 byte counts for bits per
byte — so ``vnmini eval`` puts a Gemma GGUF and a vnmini model in one fair table.

    llm = open_llama("gemma-3-270m-it-Q4_K_M.gguf", n_ctx=2048, vocab_only=True)
    tok = LlamaCppTokenizer(llm, chat_template=..., source="gemma.gguf")
    tok.encode("Điều 1.", add_bos=True)
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from vnmini.errors import VnminiError
from vnmini.text.chat_template import render_chat_template
from vnmini.text.normalization import normalize
from vnmini.text.specials import Specials


class LlamaCppTokenizer:
    """A GGUF's vocabulary tokenized by llama.cpp (see the module docstring)."""

    style = "llama.cpp"

    def __init__(self, llm: Any, chat_template: str = "", pre_tokenizer_name: str | None = None,
                 tone_style: str = "new", source: str = "<gguf>") -> None:
        import llama_cpp

        self.llm = llm
        self.source = source
        self.chat_template = chat_template
        self.pre_tokenizer_name = pre_tokenizer_name
        self.tone_style = tone_style
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._lib = llama_cpp
        n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.vocab_size = int(n)

        def tid(fn) -> int | None:
            i = int(fn(self._vocab))
            return i if 0 <= i < n else None

        self.bos_id = tid(llama_cpp.llama_vocab_bos)
        eos = tid(llama_cpp.llama_vocab_eos)
        eot = tid(llama_cpp.llama_vocab_eot)
        if eos is None and eot is None:
            raise VnminiError(f"{source}: the GGUF names no EOS token; a model must say where text ends.")
        self.eos_id = eos if eos is not None else eot
        pad = tid(llama_cpp.llama_vocab_pad)
        self.pad_id = self.eos_id if pad is None else pad  # id 0 is a real pad (Gemma's <pad>)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab)) and self.bos_id is not None
        # llama.cpp's end-of-generation set (EOS, EOT, <end_of_turn>, <|im_end|> ... as the file marks them)
        eog = [i for i in range(n) if llama_cpp.llama_vocab_is_eog(self._vocab, i)]
        self.eot_ids = list(dict.fromkeys(i for i in ([eot] if eot is not None else []) + eog if i != self.eos_id))
        self.doc_sep_id = self.bos_id if self.bos_id is not None else self.eos_id
        self.specials = Specials(bos=self._text(self.bos_id), eos=self._text(self.eos_id),
                                 pad=self._text(self.pad_id), eot=tuple(self._text(i) for i in self.eot_ids),
                                 add_bos=self.add_bos)

    # ----------------------------------------------------------------- basics
    def _text(self, i: int | None) -> str | None:
        if i is None:
            return None
        return self._lib.llama_vocab_get_text(self._vocab, i).decode("utf-8", errors="replace")

    @property
    def eot_id(self) -> int | None:
        return self.eot_ids[0] if self.eot_ids else None

    @property
    def stop_ids(self) -> list[int]:
        return list(dict.fromkeys([self.eos_id, *self.eot_ids]))

    @cached_property
    def special_ids(self) -> set[int]:
        return {i for i in range(self.vocab_size) if self._lib.llama_vocab_is_control(self._vocab, i)}

    def normalize(self, text: str) -> str:
        return normalize(text, tone_style=self.tone_style)

    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Normalize then tokenize with llama.cpp (special-token strings become their ids)."""
        ids = self._tokenize(self.normalize(text))
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenization of already-normalized texts."""
        return [self._tokenize(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids if not (skip_special and int(i) in self.special_ids)]
        return self.llm.detokenize(ids, special=not skip_special).decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- chat
    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise VnminiError(f"{self.source}: the GGUF carries no chat template (tokenizer.chat_template); "
                              "chat with a model that has one, or use `vnmini generate`.")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise VnminiError(f"chat message {m!r}: each message needs 'role' and 'content'.")
        msgs = [{"role": m["role"], "content": self.normalize(str(m["content"]))} for m in messages]
        return render_chat_template(self.chat_template, self.source,
                                    "fix tokenizer.chat_template in the GGUF (or re-convert the model)",
                                    messages=msgs, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.specials.bos or "", eos_token=self.specials.eos or "")

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        return self._tokenize(self.apply_chat_template(messages, add_generation_prompt))

    # ---------------------------------------------------------- bookkeeping
    def _piece(self, i: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._vocab, i, buf, len(buf), 0, False)
        if n < 0:  # the piece is longer than the buffer: -n is its length
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, i, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for in text (0 for control tokens), for bits per byte."""
        specials = self.special_ids
        return np.array([0 if i in specials else len(self._piece(i)) for i in range(self.vocab_size)],
                        dtype=np.int64)

    @cached_property
    def hash(self) -> str:
        """Content hash of the vocabulary text (equal hash = same ids)."""
        h = hashlib.sha256(f"llama.cpp:{self.pre_tokenizer_name}".encode())
        for i in range(self.vocab_size):
            h.update(self._lib.llama_vocab_get_text(self._vocab, i) + b"\0")
        return h.hexdigest()[:16]
