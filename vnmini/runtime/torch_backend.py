"""The torch backend: vnmini's own decoder (:mod:`vnmini.models`) behind the shared
:class:`~vnmini.runtime.generator.Generator` interface, with a preallocated KV cache.

    gen = TorchGenerator(model, tokenizer)     # what vnmini.load("runs/x/final") returns
    gen.logits([1, 2, 3])                      # [3, vocab] float32

``source`` (named in errors such as NaN logits) is the checkpoint folder: given,
or the folder the tokenizer was loaded from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vnmini.runtime.generator import Generator
from vnmini.text.tokenizer import VnTokenizer


class TorchGenerator(Generator):
    """Our PyTorch decoder with a preallocated KV cache."""

    backend = "torch"

    def __init__(self, model, tokenizer: VnTokenizer | None, device: str | torch.device = "cpu",
                 source: str | Path | None = None) -> None:
        cfg = model.config
        super().__init__(tokenizer, cfg.max_position_embeddings, cfg.stop_token_ids if tokenizer is None else ())
        if source is None and tokenizer is not None and Path(tokenizer.source).name == "tokenizer.json":
            source = Path(tokenizer.source).parent  # a checkpoint saves its tokenizer beside the weights
        self.source = str(source) if source is not None else "the torch model"
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.cache = None

    def reset(self) -> None:
        if self.cache is not None:
            self.cache.crop(0)

    def _truncate(self, n: int) -> bool:
        if self.cache is None:
            return False
        self.cache.crop(n)
        return True

    @torch.inference_mode()
    def _feed(self, ids: list[int]) -> np.ndarray:
        if self.cache is None:
            self.cache = self.model.new_cache(1, self.context_length)
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(x, cache=self.cache)
        return out[0, -1].float().cpu().numpy()

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int], first: int = 0) -> np.ndarray:
        x = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        # The LM head only on the rows asked for (forward() is lm_head ∘ hidden_states).
        return self.model.lm_head(self.model.hidden_states(x)[0, first:]).float().cpu().numpy()
