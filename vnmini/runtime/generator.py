"""One generation interface for every backend (torch, GGUF, ONNX plug in).

A backend implements three primitives — ``reset()``, ``_feed(ids) -> logits of
the last position`` (appending to its KV cache) and, optionally,
``_truncate(n)`` — plus ``logits(ids)``, and sets ``source`` (the file or
folder it runs, named in errors). Everything users call is shared, so
sampling, stop handling, chat templating and Vietnamese normalization are the
same whatever runs the model. Every ``_feed`` result is checked before it
reaches the sampler: NaN/inf logits (a corrupt file, diverged weights) are a
:class:`VnminiError` naming ``source`` (:func:`check_logits`), not numpy's
"probabilities contain NaN".

    gen = vnmini.load("runs/quickstart/chat")          # a TorchGenerator here
    for ev in gen.generate("Điều 1.", max_new_tokens=40, temperature=0):
        print(ev.text, end="", flush=True)
    answer = gen.chat([{"role": "user", "content": "Luật là gì?"}])
    gen.last_stats   # prompt/new tokens, prefill and decode seconds, finish reason
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vnmini.errors import VnminiError
from vnmini.runtime.sampling import DEFAULTS, Sampler, SamplingOptions
from vnmini.text.tokenizer import VnTokenizer


@dataclass
class TokenEvent:
    """One streamed step: the sampled id and the text it made printable (may be '')."""

    id: int
    text: str


def check_logits(logits: np.ndarray, source: str) -> np.ndarray:
    """``logits`` unchanged if every value is finite; else a VnminiError naming ``source``."""
    if not np.isfinite(logits).all():
        raise VnminiError(
            f"{source}: the model produced NaN/inf logits; the file is corrupt or the weights diverged — "
            "re-export it from a good checkpoint, or retrain."
        )
    return logits


class Generator(ABC):
    backend: str = "?"
    source: str = "the model"  # backends set the path they run

    def __init__(self, tokenizer: VnTokenizer | None, context_length: int, stop_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.stop_ids = set(stop_ids) | (set(tokenizer.stop_ids) if tokenizer else set())
        self._cached: list[int] = []
        self.last_stats: dict[str, Any] = {}

    # ----------------------------------------------------------- primitives
    @abstractmethod
    def reset(self) -> None:
        """Forget the KV cache."""

    @abstractmethod
    def _feed(self, ids: list[int]) -> np.ndarray:
        """Append ``ids`` after the cached positions; return the last position's logits [V]."""

    @abstractmethod
    def logits(self, token_ids: Sequence[int], first: int = 0) -> np.ndarray:
        """Logits [T - first, V] (float32) of positions ``first..`` of a fresh forward pass over ``token_ids``
        (cache untouched). ``first`` lets a backend skip the output layer where no one reads it (sliding-window
        scoring reads only each window's new half; for a 262k-vocabulary GGUF that halves the work)."""

    def _truncate(self, n: int) -> bool:
        """Keep only the first n cached positions; False if the backend can't."""
        return False

    # ------------------------------------------------------------- helpers
    def _need_tokenizer(self) -> VnTokenizer:
        if self.tokenizer is None:
            raise VnminiError(
                "this model has no tokenizer; pass token ids, or use a checkpoint saved with its tokenizer."
            )
        return self.tokenizer

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return self._need_tokenizer().encode(text, add_bos=add_bos)

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """Feed a prompt, reusing the longest cached prefix when the backend can crop."""
        common = 0
        for a, b in zip(self._cached, ids[:-1], strict=False):  # always re-feed at least the last id
            if a != b:
                break
            common += 1
        if common and self._truncate(common):
            self._cached = self._cached[:common]
            out = self._feed(ids[common:])
        else:
            self.reset()
            self._cached = []
            out = self._feed(ids)
        self._cached += ids[len(self._cached):]
        return out

    # ----------------------------------------------------------- generation
    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = DEFAULTS.max_new_tokens,
        temperature: float = DEFAULTS.temperature,
        top_k: int = DEFAULTS.top_k,
        top_p: float = DEFAULTS.top_p,
        repetition_penalty: float = DEFAULTS.repetition_penalty,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        add_bos: bool = True,
    ) -> Iterator[TokenEvent]:
        """Stream tokens. ``prompt`` is text (normalized, BOS added) or token ids."""
        opts = SamplingOptions(max_new_tokens, temperature, top_k, top_p, repetition_penalty, list(stop or []), seed)
        sampler = Sampler(opts)
        ids = self.encode(prompt, add_bos=add_bos) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise VnminiError("the prompt is empty; give some text or token ids.")
        if len(ids) >= self.context_length:
            raise VnminiError(
                f"the prompt is {len(ids)} tokens but the model's context is {self.context_length}; shorten it."
            )
        t0 = time.perf_counter()
        logits = check_logits(self._prefill(ids), self.source)
        t1 = time.perf_counter()
        history = list(ids)
        new: list[int] = []
        text_so_far, emitted = "", 0
        stops = [s for s in opts.stop if s]
        finish = "length"
        hit_stop_string = False
        first_token_s = None
        budget = min(opts.max_new_tokens, self.context_length - len(ids))
        for step in range(budget):
            tok = sampler(logits, history)
            if first_token_s is None:
                first_token_s = time.perf_counter() - t0
            if tok in self.stop_ids:
                finish = "stop"
                break
            new.append(tok)
            history.append(tok)
            if self.tokenizer is None:
                yield TokenEvent(tok, "")
            else:
                text_so_far = self.tokenizer.decode(new)
                hit = min((text_so_far.find(s) for s in stops if s in text_so_far), default=-1)
                if hit >= 0:
                    yield TokenEvent(tok, text_so_far[emitted:hit])
                    finish, hit_stop_string = "stop", True
                    break
                # Hold back an incomplete UTF-8 character and anything a stop string might start.
                safe = len(text_so_far.rstrip("\ufffd"))
                for s in stops:
                    for k in range(min(len(s) - 1, safe), 0, -1):
                        if text_so_far[:safe].endswith(s[:k]):
                            safe -= k
                            break
                yield TokenEvent(tok, text_so_far[emitted:safe] if safe > emitted else "")
                emitted = max(emitted, safe)
            if step + 1 < budget:
                logits = check_logits(self._feed([tok]), self.source)
                self._cached.append(tok)
        if not hit_stop_string and emitted < len(text_so_far):
            # Text held back for a possible stop string that never came.
            yield TokenEvent(-1, text_so_far[emitted:])
        t2 = time.perf_counter()
        self.last_stats = {
            "backend": self.backend,
            "prompt_tokens": len(ids),
            "new_tokens": len(new),
            "prefill_s": t1 - t0,
            "decode_s": t2 - t1,
            "time_to_first_token_s": first_token_s,
            "finish_reason": finish,
            "ids": new,
        }

    def complete(self, prompt: str | Sequence[int], **kw: Any) -> str:
        """Generate and return the whole text."""
        return "".join(ev.text for ev in self.generate(prompt, **kw))

    def chat(self, messages: Sequence[dict], stream: bool = False, **kw: Any):
        """Answer a conversation rendered with the model's chat template.

        Returns the answer text, or an iterator of :class:`TokenEvent` with ``stream=True``.
        """
        tok = self._need_tokenizer()
        ids = tok.encode_chat(messages, add_generation_prompt=True)
        kw.setdefault("stop", list(tok.specials.eot))  # end-of-turn strings, in case they decode as text
        events = self.generate(ids, **kw)
        return events if stream else "".join(ev.text for ev in events)
