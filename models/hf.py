"""Hugging Face Llama/Mistral/Qwen2 folders <-> our decoder, without ``transformers``.

Reads ``config.json`` and one or many safetensors shards (``model.safetensors``
or ``model.safetensors.index.json`` + shards; fp32/fp16/bf16), checks every
tensor's name and shape, and fills :class:`LlamaForCausalLM`. Writing is the
reverse (``export_state_dict``); the atomic folder write lives in
``vnmini.checkpoint``. ``check_safetensors`` validates a file's header
against its size without reading tensor data (for ``vnmini info``).

    model = load_hf_model("path/to/Qwen2-0.5B", dtype=torch.bfloat16)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vnmini.errors import VnminiError
from vnmini.models.config import ModelConfig
from vnmini.models.llama import LlamaForCausalLM

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Bytes per element of each safetensors dtype (the format's own names).
_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_ST_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def read_config(folder: str | Path) -> ModelConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.exists():
        raise VnminiError(f"{folder}: no such checkpoint folder; check the path.")
    if not path.is_file():
        raise VnminiError(f"{path}: missing; a checkpoint folder needs config.json (a Hugging Face Llama folder).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VnminiError(f"{path}: not valid JSON ({e}); the checkpoint is corrupt, re-save it.") from e
    return ModelConfig.from_hf_dict(data, source=str(path))


def weight_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise VnminiError(f"{index}: unreadable shard index ({e}); re-download or re-save the checkpoint.") from e
        files = [folder / n for n in names]
    else:
        files = [folder / "model.safetensors"]
    for f in files:
        if not f.is_file():
            if (folder / "pytorch_model.bin").is_file():
                raise VnminiError(f"{folder}: only pytorch_model.bin (pickle) here; vnmini loads safetensors only — "
                                  "convert it with transformers' save_pretrained(safe_serialization=True).")
            raise VnminiError(f"{f}: missing weight file; the checkpoint is incomplete.")
    return files


def check_safetensors(path: str | Path) -> dict[str, int]:
    """Check a safetensors file is whole, reading only its header; returns ``{"tensors", "bytes"}``.

    Layout: 8-byte little-endian header length N, N bytes of JSON (``name -> {dtype,
    shape, data_offsets: [begin, end]}`` relative to the data after the header), the data.
    Every tensor's range must lie in the file and match its shape, and the file must end
    exactly where the last tensor does; a copy cut short fails here, naming the file.
    """
    path = Path(path)

    def bad(why: str) -> VnminiError:
        return VnminiError(f"{path}: corrupt or truncated safetensors file ({why}); re-save or re-download it.")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _ST_MAX_HEADER):
                raise bad(f"header of {n} bytes does not fit in {size} bytes")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"header is not JSON: {e}") from e
    except OSError as e:
        raise VnminiError(f"{path}: cannot read it ({e.strerror}); check the file and its permissions.") from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data = size - 8 - n
    end = 0
    tensors = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in t["data_offsets"])
            count = math.prod(int(d) for d in t["shape"])
            itemsize = _ST_ITEMSIZE.get(t["dtype"])
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"tensor {name!r} has no valid dtype/shape/data_offsets") from e
        if not 0 <= begin <= stop or stop > data:
            raise bad(f"tensor {name!r} ends at data byte {stop}, but the file holds {data}")
        if itemsize is not None and stop - begin != count * itemsize:
            raise bad(f"tensor {name!r} has {stop - begin} bytes for shape {t['shape']} {t['dtype']}")
        end = max(end, stop)
        tensors += 1
    if data != end:
        raise bad(f"file is {size} bytes, the header says {8 + n + end}")
    return {"tensors": tensors, "bytes": size}


def read_state_dict(folder: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open  # here, so `import vnmini.models` stays light

    out: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    t = sf.get_tensor(key)
                    out[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError, RuntimeError) as e:
            raise VnminiError(f"{f}: corrupt or truncated safetensors file ({str(e)[:80]}); "
                              "re-save or re-download it.") from e
    return out


def load_hf_model(
    folder: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
) -> LlamaForCausalLM:
    """Build our decoder from a HF Llama/Mistral/Qwen2 folder. ``dtype`` None keeps fp32."""
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    cfg = read_config(folder)
    sd = read_state_dict(folder, dtype or torch.float32)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    expected = dict(model.state_dict())
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        sd.pop("lm_head.weight", None)  # some tied checkpoints still store it
    # Rotary inv_freq buffers are not persistent; older HF dumps may carry them.
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise VnminiError(
            f"{folder}: weights don't match config.json (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the checkpoint is incomplete or not a Llama-family model."
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise VnminiError(f"{folder}: tensor {k} has shape {tuple(v.shape)}, "
                              f"config.json implies {tuple(expected[k].shape)}.")
    model.load_state_dict(sd, assign=True, strict=not cfg.tie_word_embeddings)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers created on meta must be rebuilt on a real device.
    model.model.rotary_emb = type(model.model.rotary_emb)(cfg.head_dim, cfg.rope_theta)
    return model.to(device).eval()


def export_state_dict(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """HF-named tensors to save: tied lm_head dropped, Qwen2-style o_proj bias made explicit."""
    cfg = model.config
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    if cfg.attention_bias and not cfg.attention_out_bias:
        for i in range(cfg.num_hidden_layers):
            w = sd[f"model.layers.{i}.self_attn.o_proj.weight"]
            sd[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    return sd
