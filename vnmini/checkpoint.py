"""Checkpoints: a Hugging Face Llama folder that transformers, llama.cpp and Optimum open.

A vnmini checkpoint folder holds ``config.json`` (LlamaConfig), ``model.safetensors``
(HF tensor names), ``generation_config.json``, the tokenizer files when there is
a tokenizer, and ``vnmini.json`` (training provenance). Resumable runs add
``trainer_state.pt``, written by the trainer. The folder is written to a temp
folder and swapped in by one rename, so a crash never leaves half a checkpoint.

    save_checkpoint(model, "runs/tiny/final", tokenizer=tok, provenance={"steps": 1000})
    ckpt = load_checkpoint("runs/tiny/final")   # .model, .tokenizer, .provenance, .config
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vnmini.atomic import atomic_dir, write_json
from vnmini.errors import VnminiError
from vnmini.models import LlamaForCausalLM, ModelConfig, export_state_dict, load_hf_model, read_config
from vnmini.runtime.sampling import DEFAULTS
from vnmini.text.tokenizer import VnTokenizer

PROVENANCE_FILE = "vnmini.json"


def _version() -> str:
    from vnmini._version import __version__

    return __version__


@dataclass
class Checkpoint:
    model: LlamaForCausalLM
    tokenizer: VnTokenizer | None
    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def generation_config(cfg: ModelConfig, tokenizer: VnTokenizer | None) -> dict[str, Any]:
    eos = tokenizer.stop_ids if tokenizer is not None else cfg.stop_token_ids
    return {
        "bos_token_id": tokenizer.bos_id if tokenizer is not None else cfg.bos_token_id,
        "eos_token_id": eos if len(eos) != 1 else eos[0],
        "pad_token_id": tokenizer.pad_id if tokenizer is not None else cfg.pad_token_id,
        "do_sample": True,
        "temperature": DEFAULTS.temperature,
        "top_p": DEFAULTS.top_p,
        "top_k": DEFAULTS.top_k,
        "repetition_penalty": DEFAULTS.repetition_penalty,
        "max_new_tokens": DEFAULTS.max_new_tokens,
    }


def save_checkpoint(
    model: LlamaForCausalLM,
    folder: str | Path,
    tokenizer: VnTokenizer | None = None,
    provenance: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (+ tokenizer) as a HF Llama folder, atomically. Returns the folder."""
    folder = Path(folder)
    cfg = model.config
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise VnminiError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}; "
                "build the model with vocab_size >= the tokenizer's."
            )
        cfg.bos_token_id, cfg.pad_token_id = tokenizer.bos_id, tokenizer.pad_id
        cfg.eos_token_id = tokenizer.eos_id
    sd = export_state_dict(model)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    sd = {k: v.cpu() for k, v in sd.items()}
    stored_dtype = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    with atomic_dir(folder) as tmp:
        hf = cfg.to_hf_dict()
        hf["torch_dtype"] = hf["dtype"] = stored_dtype
        write_json(tmp / "config.json", hf)
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "generation_config.json", generation_config(cfg, tokenizer))
        if tokenizer is not None:
            tokenizer.save(tmp)
        prov = {
            "vnmini_version": _version(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "num_parameters": model.num_parameters(),
            "tokenizer_hash": tokenizer.hash if tokenizer is not None else None,
            **(provenance or {}),
        }
        write_json(tmp / PROVENANCE_FILE, prov)
        for name, src in (extra_files or {}).items():
            (tmp / name).write_bytes(Path(src).read_bytes())
    return folder


def load_tokenizer(folder: str | Path) -> VnTokenizer | None:
    folder = Path(folder)
    return VnTokenizer.load(folder) if (folder / "tokenizer.json").is_file() else None


def load_checkpoint(
    folder: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    require_tokenizer: bool = False,
) -> Checkpoint:
    """Open a vnmini or Hugging Face Llama/Mistral/Qwen2 folder (safetensors)."""
    folder = Path(folder)
    if folder.is_file():
        raise VnminiError(f"{folder}: is a file; pass the checkpoint folder (with config.json and model.safetensors).")
    model = load_hf_model(folder, dtype=dtype, device=device)
    tokenizer = load_tokenizer(folder)
    if tokenizer is None and require_tokenizer:
        raise VnminiError(f"{folder}: has no tokenizer.json; save the checkpoint with its tokenizer.")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise VnminiError(
            f"{folder}: tokenizer has {tokenizer.vocab_size} tokens but config.json vocab_size is "
            f"{model.config.vocab_size}; the tokenizer does not belong to this model."
        )
    prov: dict[str, Any] = {}
    pfile = folder / PROVENANCE_FILE
    if pfile.is_file():
        try:
            prov = json.loads(pfile.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VnminiError(f"{pfile}: invalid JSON ({e.msg}); fix or delete it.") from e
    want = prov.get("tokenizer_hash") if isinstance(prov, dict) else None
    if want and tokenizer is not None and tokenizer.hash != want:
        # The ids a model learned mean nothing under another vocabulary: refuse rather than emit garbage.
        raise VnminiError(
            f"{folder / 'tokenizer.json'}: does not match the tokenizer this checkpoint was trained with "
            f"(hash {tokenizer.hash}, recorded {want} in {PROVENANCE_FILE}); restore the checkpoint's own "
            "tokenizer files."
        )
    return Checkpoint(model=model, tokenizer=tokenizer, path=folder, provenance=prov)


def describe_checkpoint(folder: str | Path) -> dict[str, Any]:
    """What ``vnmini info`` prints for a checkpoint, without loading the weights."""
    folder = Path(folder)
    cfg = read_config(folder)
    files = list(folder.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    tok = load_tokenizer(folder)
    return {
        "path": str(folder),
        "kind": "checkpoint",
        "architecture": cfg.model_type,
        "parameters": cfg.num_parameters(),
        "dtype": cfg.torch_dtype,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "heads": f"{cfg.num_attention_heads} (kv {cfg.num_key_value_heads})",
        "vocab_size": cfg.vocab_size,
        "context": cfg.max_position_embeddings,
        "tied_embeddings": cfg.tie_word_embeddings,
        "tokenizer": f"{tok.vocab_size} tokens, pre {tok.pre_tokenizer_name}, hash {tok.hash}" if tok else "none",
        "weights_bytes": size,
        "resumable": (folder / "trainer_state.pt").is_file(),
    }
