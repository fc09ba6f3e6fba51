"""The llama.cpp backend: a GGUF file behind vnmini's :class:`Generator` interface.

    gen = GGUFGenerator("chat-q4_k_m.gguf", threads=4)      # or vnmini.load("chat.gguf")
    gen.chat([{"role": "user", "content": "Xin chào"}], max_new_tokens=64)
    gen.logits(ids)                                          # [T, V] float32

Runs on llama-cpp-python's low-level evaluation (``Llama.eval`` and the
context's logits), not on its sampler: sampling, stop strings and chat
templating are vnmini's own (the base class), so they are the same on every
backend.

Tokenizer choice: a :class:`VnTokenizer` rebuilt from the GGUF's own
``tokenizer.*`` metadata (:func:`vnmini.text.gguf_vocab.tokenizer_from_gguf`)
wherever vnmini can rebuild it exactly (byte-level BPE with a gpt-2, qwen2 or
llama-bpe pre-tokenizer); any other GGUF llama.cpp opens (Gemma, Llama-2,
Mistral...) runs on llama.cpp's own tokenizer behind the same interface
(:class:`vnmini.text.llamacpp_tokenizer.LlamaCppTokenizer`), still with vnmini's
normalization and the file's chat template. The file is then self-contained (no checkpoint
folder needed) and text goes through exactly the code the torch backend uses —
Vietnamese normalization, special-token parsing, the Jinja chat template,
byte-exact incremental decoding — while the export's verification has already
proven llama.cpp tokenizes the same file into the same ids. For files exported
by vnmini, the rebuilt tokenizer's hash must equal the one recorded at export.

KV cache: llama.cpp's cache is cropped by moving ``Llama.n_tokens`` back (its
``eval`` removes every cached position from ``n_tokens`` on before decoding),
so prompts that share a prefix with the previous turn reuse it. Pass
``f32_kv_cache=True`` for parity work (the default f16 cache is llama.cpp's
and costs ~1e-3 relative error in the logits).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vnmini.errors import VnminiError
from vnmini.runtime.generator import Generator


def open_llama(path: str | Path, n_ctx: int, threads: int | None = None, f32_cache: bool = True,
               logits_all: bool = True, vocab_only: bool = False) -> Any:
    """A quiet ``llama_cpp.Llama`` (f32 KV cache by default, for parity)."""
    from llama_cpp import Llama

    kw: dict[str, Any] = dict(n_ctx=n_ctx, n_batch=min(n_ctx, 512), logits_all=logits_all, verbose=False,
                              n_threads=threads or max(1, min(4, os.cpu_count() or 1)), vocab_only=vocab_only)
    if f32_cache:
        kw.update(type_k=0, type_v=0)  # GGML_TYPE_F32
    try:
        return Llama(str(path), **kw)
    except (ValueError, RuntimeError) as e:
        raise VnminiError(f"{path}: llama.cpp cannot load it ({e}); re-export the file.") from e


DEFAULT_MAX_CTX = 4096


class GGUFGenerator(Generator):
    """llama.cpp (llama-cpp-python) running a ``.gguf`` file."""

    backend = "gguf"

    def __init__(self, path: str | Path, threads: int | None = None, n_ctx: int | None = None,
                 f32_kv_cache: bool = False) -> None:
        import gguf

        from vnmini.text.gguf_vocab import NotRebuildable, field_value, tokenizer_from_gguf
        from vnmini.text.llamacpp_tokenizer import LlamaCppTokenizer

        path = Path(path)
        if not path.is_file():
            raise VnminiError(f"{path}: no such .gguf file; export one with `vnmini export gguf`.")
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as e:  # gguf raises ValueError/struct errors/IndexError on damaged files
            raise VnminiError(f"{path}: not a readable GGUF ({type(e).__name__}: {str(e)[:80]}); re-export it.") from e
        arch = field_value(reader, "general.architecture")
        try:
            tokenizer = tokenizer_from_gguf(reader, source=str(path))
        except NotRebuildable:  # Gemma, Llama-2, ...: llama.cpp's own tokenizer, vnmini's normalization
            tokenizer = None
        template = field_value(reader, "tokenizer.chat_template") or ""
        pre = field_value(reader, "tokenizer.ggml.pre")
        trained_ctx = int(field_value(reader, f"{arch}.context_length", 2048))
        del reader  # releases the memory map before llama.cpp maps the file itself
        # Gemma-3 trains at 32k: a KV cache that long costs ~GBs for no use here; ask for more with n_ctx.
        ctx = min(int(n_ctx), trained_ctx) if n_ctx else min(trained_ctx, DEFAULT_MAX_CTX)
        self.llm = open_llama(path, n_ctx=ctx, threads=threads, f32_cache=f32_kv_cache, logits_all=False)
        if tokenizer is None:
            tokenizer = LlamaCppTokenizer(self.llm, chat_template=template, pre_tokenizer_name=pre, source=str(path))
        super().__init__(tokenizer, ctx)
        self.path = path
        self.source = str(path)
        self.n_vocab = self.llm.n_vocab()

    # ----------------------------------------------------------- primitives
    def reset(self) -> None:
        self.llm.reset()

    def _truncate(self, n: int) -> bool:
        if n > self.llm.n_tokens:
            return False
        self.llm.n_tokens = n  # the next eval() removes positions n.. from the KV cache
        return True

    def _last_logits(self) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def _feed(self, ids: list[int]) -> np.ndarray:
        if self.llm.n_tokens + len(ids) > self.context_length:
            raise VnminiError(f"{self.path}: {self.llm.n_tokens + len(ids)} tokens exceed the context "
                              f"of {self.context_length}; shorten the prompt.")
        self.llm.eval(ids)
        return self._last_logits()

    def logits(self, token_ids: Sequence[int], first: int = 0) -> np.ndarray:
        """Logits [T - first, V] of a fresh pass. Uses the same llama.cpp context, so the
        generation cache is dropped (the next ``generate`` re-feeds its prompt). Positions
        before ``first`` are decoded without output rows (llama.cpp's per-token logits flag)."""
        ids = [int(i) for i in token_ids]
        if len(ids) > self.context_length:
            raise VnminiError(f"{self.path}: {len(ids)} tokens exceed the context of {self.context_length}.")
        if not 0 <= first <= len(ids):
            raise ValueError(f"first={first} is outside 0..{len(ids)}")
        llm, V = self.llm, self.n_vocab
        llm.reset()
        self._cached = []
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        out = np.empty((len(ids) - first, V), dtype=np.float32)
        for i in range(0, len(ids), llm.n_batch):
            chunk = ids[i: i + llm.n_batch]
            llm._batch.set_batch(batch=chunk, n_past=i, logits_all=True)
            wanted = [i + j >= first for j in range(len(chunk))]
            for j, flag in enumerate(wanted):
                llm._batch.batch.logits[j] = flag
            llm._ctx.decode(llm._batch)
            n_out = sum(wanted)
            if n_out:
                rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_out * V,))
                lo = max(i, first) - first
                out[lo: lo + n_out] = rows.reshape(n_out, V)
        llm.reset()
        return out

    def close(self) -> None:
        self.llm.close()
