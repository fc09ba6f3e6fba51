"""vnmini: Vietnamese text to a small chat model that runs offline on cheap hardware.

The public Python API (the CLI calls the same functions):

    import vnmini
    gen = vnmini.load("runs/quickstart/chat")         # checkpoint, .gguf or ONNX folder
    print(gen.complete("Điều 1.", max_new_tokens=30))
    vnmini.normalize("hoà bình")                       # -> "hòa bình"
    vnmini.train(data="shards/", preset="tiny", out="runs/tiny")            # pretrain (resumable)
    vnmini.sft(data="sft.jsonl", init_from="runs/tiny/final", out="runs/chat")  # chat fine-tuning
    vnmini.distill(teacher="runs/tiny/final", data="shards/", preset="micro", out="runs/kd")  # or teacher_cache=
    vnmini.plan(minutes=10, data="shards/")            # what a time budget buys: probe + recipe rules
    vnmini.serve("chat-q4_0.gguf", port=8000)          # OpenAI-compatible API + web chat on 127.0.0.1

Names are imported on first use (PEP 562), so ``import vnmini`` is cheap and
``import vnmini.kernels`` / ``import vnmini.models`` pull in no trainer, tokenizer or
safetensors. Where each capability lives: ``text/`` (normalization, tokenizers),
``data/`` (corpus, shards, SFT sets), ``training/``, ``runtime/`` (load, generate,
chat), ``eval/`` (bpb, multiple choice, bench), ``quickstart.py``; ``vnmini.models``,
``vnmini.kernels``, ``vnmini.export`` and ``vnmini.cli`` are the other pillars.
"""

from __future__ import annotations

import importlib
from typing import Any

from vnmini._version import __version__

# public name -> module that defines it
_API = {
    "VnminiError": "vnmini.errors",
    "load": "vnmini.runtime.loader",
    "normalize": "vnmini.text.normalization",
    "train": "vnmini.training.pretrain",
    "sft": "vnmini.training.sft",
    "distill": "vnmini.training.distill",
    "plan": "vnmini.training.plan",
    "eval_text": "vnmini.eval.bpb",
    "eval_mc": "vnmini.eval.mc",
    "bench": "vnmini.eval.bench",
    "ChatSession": "vnmini.runtime.chat",
    "serve": "vnmini.runtime.server",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'vnmini' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
