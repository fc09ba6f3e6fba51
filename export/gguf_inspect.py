"""``describe_gguf(path)``: what a GGUF file holds, for ``vnmini info`` (no weights loaded).

    describe_gguf("chat-q4_k_m.gguf")
    # {'kind': 'gguf', 'quant': 'q4_k_m', 'parameters': 5512448, 'tensor_types': 'q4_k × 9, q6_k × 5, f32 × 11', ...}

Reads the header and tensor table with ``gguf.GGUFReader`` (a memory map;
tensor data is never touched). A file cut short fails with one line naming it:
either the reader cannot map the tensor table, or a tensor's data would end
past the end of the file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import gguf

from vnmini.errors import VnminiError


def file_type_name(ftype: int | None) -> str:
    """``general.file_type`` as vnmini's quant name (``q4_k_m``, ``f16``...)."""
    if ftype is None:
        return "unknown"
    try:
        name = gguf.LlamaFileType(int(ftype)).name.lower()
    except ValueError:
        return f"type {ftype}"
    return name.removeprefix("mostly_").removeprefix("all_")


def describe_gguf(path: str | Path) -> dict[str, Any]:
    """A flat dict of the file's model, tokenizer, quantization and provenance."""
    from vnmini.text.gguf_vocab import KEY_TOKENIZER_HASH, field_value

    path = Path(path)
    if not path.is_file():
        raise VnminiError(f"{path}: no such .gguf file.")
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:  # bad magic (ValueError), truncated (struct/IndexError/OSError, numpy reshape)
        raise VnminiError(f"{path}: not a readable GGUF, damaged or truncated ({type(e).__name__}: {str(e)[:80]}); "
                          "re-export it.") from e  # fmt: skip
    size = path.stat().st_size
    # A slice past the end of numpy's memory map is silently short; don't rely on the reader's reshape noticing.
    end = max((int(t.data_offset) + int(t.n_bytes) for t in r.tensors), default=0)
    if end > size:
        last = max(r.tensors, key=lambda t: int(t.data_offset) + int(t.n_bytes))
        raise VnminiError(f"{path}: truncated GGUF (tensor {last.name} ends at byte {end}, the file has {size}); "
                          "re-export or re-download it.")  # fmt: skip
    arch = field_value(r, "general.architecture", "?")

    def hp(key: str) -> Any:
        return field_value(r, f"{arch}.{key}")

    names = {t.name for t in r.tensors}
    types = Counter(t.tensor_type.name.lower() for t in r.tensors)
    tokens = field_value(r, "tokenizer.ggml.tokens") or []
    prov_raw = field_value(r, "vnmini.provenance")
    try:
        prov = json.loads(prov_raw) if prov_raw else {}
    except json.JSONDecodeError:
        prov = {}
    heads, kv = hp("attention.head_count"), hp("attention.head_count_kv")
    out: dict[str, Any] = {
        "path": str(path),
        "kind": "gguf",
        "architecture": arch,
        "name": field_value(r, "general.name"),
        "quant": file_type_name(field_value(r, "general.file_type")),
        "parameters": int(sum(int(t.n_elements) for t in r.tensors)),
        "layers": hp("block_count"),
        "hidden_size": hp("embedding_length"),
        "intermediate_size": hp("feed_forward_length"),
        "heads": f"{heads} (kv {kv})",
        "vocab_size": hp("vocab_size") or len(tokens),
        "context": hp("context_length"),
        "rope_theta": hp("rope.freq_base"),
        "tied_embeddings": "output.weight" not in names,
        "tokenizer": (f"{field_value(r, 'tokenizer.ggml.model')} {len(tokens)} tokens, "
                      f"pre {field_value(r, 'tokenizer.ggml.pre')}, hash {field_value(r, KEY_TOKENIZER_HASH)}"),
        "chat_template": "yes" if field_value(r, "tokenizer.chat_template") else "no",
        "tensors": len(r.tensors),
        "tensor_types": ", ".join(f"{k} × {v}" for k, v in types.most_common()),
        "file_bytes": size,
        "license": field_value(r, "general.license"),
        "vnmini_version": field_value(r, "vnmini.version"),
    }
    for k, v in prov.items():  # training provenance recorded at export (scalars only)
        if isinstance(v, str | int | float | bool) and k != "vnmini_version":
            out[f"provenance.{k}"] = v
    return out
