"""ONNX Runtime backend: drive an exported decoder folder behind the Generator interface.

Opens any folder whose ``model.onnx`` has Optimum/GenAI-style KV-cache I/O
(``input_ids``, ``attention_mask``, ``position_ids`` if present,
``past_key_values.{i}.key|value`` -> ``logits``, ``present.{i}.key|value``):
ours (:func:`vnmini.export.to_onnx`), Optimum's or ONNX Runtime GenAI's
builder output. Sizes and dtypes are read from the graph itself.

    gen = vnmini.load("out/onnx-int8")                  # -> ONNXGenerator
    gen = ONNXGenerator("out/onnx-int8", threads=2)
    print(gen.complete("Điều 1.", max_new_tokens=40, temperature=0))

CPU sessions use all graph optimizations and ``threads`` intra-op threads
(default: the machine's cores). ``device="cuda"`` (or ``"auto"`` with
onnxruntime-gpu and a GPU) uses the CUDA execution provider. The KV cache
stays inside ONNX Runtime between steps: with IO binding each step's
``present`` OrtValues are bound as the next step's ``past`` inputs, so the
cache is never copied out to numpy and back; only the last position's logits
are read (measured in benchmarks/results_onnx.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vnmini.errors import VnminiError
from vnmini.runtime.generator import Generator
from vnmini.text.tokenizer import VnTokenizer

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}


def session_options(threads: int | None = None):
    """CPU-tuned :class:`onnxruntime.SessionOptions`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def pick_providers(device: str) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device in ("cuda", "gpu") or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in avail:
            raise VnminiError("device 'cuda' needs onnxruntime-gpu and a CUDA GPU; "
                              "install onnxruntime-gpu or use --device cpu.")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in avail:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("cpu", "auto"):
        raise VnminiError(f"device {device!r} is unknown for ONNX Runtime; use cpu, cuda or auto.")
    return ["CPUExecutionProvider"]


class ONNXGenerator(Generator):
    """A Generator over an ONNX decoder with explicit KV cache (batch 1)."""

    backend = "onnx"

    def __init__(self, folder: str | Path, threads: int | None = None, device: str = "cpu",
                 io_binding: bool = True) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        model_file = folder / "model.onnx"
        if not model_file.is_file():
            raise VnminiError(f"{folder}: no model.onnx; export one with `vnmini export onnx CKPT -o {folder}`.")
        cfg = {}
        if (folder / "config.json").is_file():
            try:
                cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise VnminiError(f"{folder / 'config.json'}: invalid JSON ({e.msg}); re-export the folder.") from e
        tokenizer = VnTokenizer.load(folder) if (folder / "tokenizer.json").is_file() else None
        eos = cfg.get("eos_token_id")
        stop = [] if tokenizer is not None or eos is None else (eos if isinstance(eos, list) else [eos])
        super().__init__(tokenizer, int(cfg.get("max_position_embeddings", 2048)), stop)
        self.folder = folder
        self.source = str(folder)
        self.providers = pick_providers(device)
        try:
            self.session = ort.InferenceSession(str(model_file), sess_options=session_options(threads),
                                                providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VnminiError(f"{model_file}: ONNX Runtime cannot load it ({msg[:200]}); re-export the folder.") from e
        self.device_type = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        outputs = [o.name for o in self.session.get_outputs()]
        if "input_ids" not in inputs or "logits" not in outputs or not self.past_names:
            raise VnminiError(f"{model_file}: not a decoder with KV cache "
                              "(needs input_ids, past_key_values.*, logits); "
                              "export it with `vnmini export onnx`.")
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        first = inputs[self.past_names[0]]
        # Static in our graphs; GenAI's builder leaves head_dim symbolic, so fall back to config.json.
        heads = cfg.get("num_attention_heads", 1)
        dims = {1: cfg.get("num_key_value_heads", heads), 3: cfg.get("head_dim") or cfg.get("hidden_size", 0) // heads}
        self.kv_heads, self.head_dim = (int(first.shape[i]) if isinstance(first.shape[i], int) else int(dims[i])
                                        for i in (1, 3))
        if not self.head_dim:
            raise VnminiError(f"{model_file}: past_key_values shapes are symbolic and config.json lacks head sizes.")
        self.kv_dtype = _NP_TYPES.get(first.type, np.float32)
        self.mask_dtype = _NP_TYPES.get(inputs["attention_mask"].type, np.int64) if "attention_mask" in inputs else None
        self.has_position_ids = "position_ids" in inputs
        self.io_binding = io_binding
        self.vocab_size = int(cfg.get("vocab_size", 0)) or None
        self._past: list = []
        self._pos = 0
        self.reset()

    # ------------------------------------------------------------ helpers
    def _empty_past(self) -> list:
        import onnxruntime as ort

        z = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        if self.io_binding:
            return [ort.OrtValue.ortvalue_from_numpy(z, self.device_type, 0) for _ in self.past_names]
        return [z for _ in self.past_names]

    def _inputs(self, ids: Sequence[int], start: int) -> dict[str, np.ndarray]:
        t = len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if self.mask_dtype is not None:
            feed["attention_mask"] = np.ones((1, start + t), dtype=self.mask_dtype)
        if self.has_position_ids:
            feed["position_ids"] = np.arange(start, start + t, dtype=np.int64)[None]
        return feed

    def run(self, ids: Sequence[int], past: list | None = None, start: int = 0) -> tuple[np.ndarray, list]:
        """One graph call: logits [T, V] (float32) and the new past (OrtValues or arrays)."""
        if not ids:
            raise VnminiError("no token ids to feed the ONNX model.")
        past = past if past is not None else self._empty_past()
        feed = self._inputs(ids, start)
        if self.io_binding:
            b = self.session.io_binding()
            for name, arr in feed.items():
                b.bind_cpu_input(name, arr)
            for name, val in zip(self.past_names, past, strict=True):
                b.bind_ortvalue_input(name, val)
            b.bind_output("logits", "cpu")  # read by the sampler on the host
            for name in self.present_names:
                b.bind_output(name, self.device_type)
            self.session.run_with_iobinding(b)
            outs = b.get_outputs()
            # Only the logits leave ONNX Runtime; presents stay OrtValues for the next step.
            return outs[0].numpy()[0].astype(np.float32, copy=False), list(outs[1:])
        feed = {**feed, **dict(zip(self.past_names, past, strict=True))}
        outs = self.session.run(["logits", *self.present_names], feed)
        return outs[0][0].astype(np.float32, copy=False), outs[1:]

    # --------------------------------------------------------- primitives
    def reset(self) -> None:
        self._past = self._empty_past()
        self._pos = 0

    def step(self, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` to the cache; logits of every fed position [T, V]."""
        if self._pos + len(ids) > self.context_length:
            raise VnminiError(f"{self._pos + len(ids)} positions exceed the model's context of {self.context_length}.")
        logits, self._past = self.run(list(ids), self._past, self._pos)
        self._pos += len(ids)
        return logits

    def _feed(self, ids: list[int]) -> np.ndarray:
        return self.step(ids)[-1]

    def _truncate(self, n: int) -> bool:
        import onnxruntime as ort

        if n > self._pos:
            return False
        cut = []
        for v in self._past:
            a = v.numpy() if self.io_binding else v
            a = np.ascontiguousarray(a[:, :, :n])
            cut.append(ort.OrtValue.ortvalue_from_numpy(a, self.device_type, 0) if self.io_binding else a)
        self._past, self._pos = cut, n
        return True

    def logits(self, token_ids: Sequence[int], first: int = 0) -> np.ndarray:
        return self.run([int(i) for i in token_ids])[0][first:]

    @property
    def cached_length(self) -> int:
        return self._pos
