"""vnmini: Vietnamese text to a small chat model that runs offline on cheap hardware.

The public Python API (the CLI calls the same functions):

    import vnmini
    gen = vnmini.load("runs/quickstart/chat")         # checkpoint, .gguf or ONNX folder
    print(gen.complete("Điều 1.", max_new_tokens=30))
    vnmini.normalize("hoà bình")                       # -> "hòa bình"
    vnmini.train(data="shards/", preset="tiny", out="runs/tiny")            # pretrain (resumable)
    vnmini.sft(data="sft.jsonl", init_from="runs/tiny/final", out="runs/chat")  # chat fine-tuning
    vnmini.distill(teacher="runs/tiny/final", data="shards/", preset="micro", out="runs/kd")  # or teacher_cache=
"""

from __future__ import annotations

__version__ = "0.1.0"

# train, sft and distill are imported eagerly, not through a lazy module __getattr__: the functions
# share their names with the submodules vnmini/train.py, sft.py and distill.py, and a lazy import
# would leave the *module* bound as vnmini.train. torch is already loaded by vnmini.runtime.
from vnmini.bench import bench  # noqa: E402
from vnmini.chat_session import ChatSession  # noqa: E402
from vnmini.distill import distill  # noqa: E402
from vnmini.errors import VnminiError  # noqa: E402
from vnmini.evaluate import eval_mc, eval_text  # noqa: E402
from vnmini.runtime import load  # noqa: E402
from vnmini.sft import sft  # noqa: E402
from vnmini.text import normalize  # noqa: E402
from vnmini.train import train  # noqa: E402

__all__ = ["__version__", "VnminiError", "load", "normalize", "train", "sft", "distill",
           "eval_text", "eval_mc", "bench", "ChatSession"]
