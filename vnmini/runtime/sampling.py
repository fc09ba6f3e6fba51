"""Next-token sampling, shared by every backend so they all behave the same.

    sampler = Sampler(SamplingOptions(temperature=0.7, top_p=0.9, seed=1))
    next_id = sampler(logits_row, history_ids)

``temperature == 0`` is greedy (argmax, ties to the lowest id as torch does).
Logits must be finite (``Generator.generate`` checks them with the model's path
first; the sampler refuses NaN/inf itself too, for direct callers).

:data:`DEFAULTS` is the one source of the sampling defaults: ``Generator.generate``,
``ChatSession``, ``teacher generate`` and the CLI flags all read it. The repetition
penalty defaults to 1.1, not 1.0: models trained for minutes loop on their most
frequent tokens without it, and the CLI and the Python API must sample the same.
Pass ``repetition_penalty=1.0`` to turn it off (greedy decoding that matches
``transformers``' ``generate`` exactly, for example).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def validate(self) -> None:
        from vnmini.errors import VnminiError

        if self.temperature < 0:
            raise VnminiError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise VnminiError(f"--top-p {self.top_p}: must be in (0, 1].")
        if self.top_k < 0:
            raise VnminiError(f"--top-k {self.top_k}: must be >= 0 (0 = off).")
        if self.repetition_penalty <= 0:
            raise VnminiError(f"--repetition-penalty {self.repetition_penalty}: must be > 0 (1 = off).")
        if self.max_new_tokens < 0:
            raise VnminiError(f"--max-new-tokens {self.max_new_tokens}: must be >= 0.")


DEFAULTS = SamplingOptions()


class Sampler:
    """Applies repetition penalty, temperature, top-k, top-p, then draws (numpy, float64)."""

    def __init__(self, opts: SamplingOptions) -> None:
        opts.validate()
        self.opts = opts
        self.rng = np.random.default_rng(opts.seed)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        o = self.opts
        x = np.asarray(logits, dtype=np.float64).copy()
        if not np.isfinite(x).all():
            from vnmini.errors import VnminiError

            raise VnminiError("the model produced NaN/inf logits; its file is corrupt or the weights diverged — "
                              "re-export it from a good checkpoint, or retrain.")
        if o.repetition_penalty != 1.0 and history:
            # CTRL / HF convention: divide positive logits, multiply negative ones.
            idx = np.unique(np.asarray(history, dtype=np.int64))
            idx = idx[idx < x.shape[0]]
            v = x[idx]
            x[idx] = np.where(v > 0, v / o.repetition_penalty, v * o.repetition_penalty)
        if o.temperature == 0:
            return int(np.argmax(x))
        if 0 < o.top_k < x.shape[0]:
            kth = np.partition(x, -o.top_k)[-o.top_k]
            x[x < kth] = -np.inf
        # Shift before dividing: a tiny temperature then sends the rest to -inf (p = 0), never inf - inf = NaN.
        x -= x.max()
        x /= o.temperature
        p = np.exp(x)
        p /= p.sum()
        if o.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            cut = int(np.searchsorted(cum, o.top_p)) + 1
            keep = order[:cut]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(self.rng.choice(p.shape[0], p=p))
