"""``to_gguf``: a vnmini checkpoint → one llama.cpp GGUF file, quantized and verified.

    from vnmini.export import to_gguf
    res = to_gguf("runs/quickstart/chat", "chat-q4_k_m.gguf", quant="q4_k_m")
    res.size_bytes, res.tensor_types, res.fallbacks, res.verify["passed"]

CLI: ``vnmini export gguf CKPT -o model.gguf --quant q8_0``.

The file is written with the ``gguf`` package (llama.cpp's own writer), arch
``llama`` (Llama, Mistral) or ``qwen2`` (q/k/v bias, rotary halves unpermuted),
tensor names and Q/K row order as llama.cpp's ``convert_hf_to_gguf.py`` produces them, norms in f32, and the tokenizer +
chat template inside (:mod:`vnmini.export.gguf_tokenizer`).

Quant types:

- ``f32``, ``f16``, ``bf16``: every matrix in that type.
- ``q8_0``: every matrix in Q8_0.
- ``q4_0``: every matrix in Q4_0 except the output head (``output``, or
  ``token_embd`` when tied), which is kept in Q8_0 — llama.cpp's quantizer also
  gives the head more bits (Q6_K) because it is the most sensitive matrix.
- ``q4_k_m``, ``q5_k_m``, ``q6_k``: an f32 GGUF goes through llama.cpp's own
  quantizer (``llama_cpp.llama_model_quantize``), which chooses the per-tensor
  mix and its own fallbacks for rows not a multiple of 256.

Q8_0/Q4_0 blocks cover 32 values of a row; a matrix whose rows are not a
multiple of 32 is written in f16 instead (what llama.cpp's converter does on
``QuantError``) and listed in ``fallbacks``. Everything is written to a temp
file beside the output and renamed at the end, so a failure never leaves a
half file; an existing output is refused unless ``force``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from vnmini.atomic import atomic_path
from vnmini.errors import VnminiError
from vnmini.export.result import ExportResult, read_verify_text
from vnmini.outputs import check_output

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# quant name -> (GGUF file type, type of 2-D tensors) for the types we write ourselves.
DIRECT_QUANTS: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f32": (FT.ALL_F32, Q.F32),
    "f16": (FT.MOSTLY_F16, Q.F16),
    "bf16": (FT.MOSTLY_BF16, Q.BF16),
    "q8_0": (FT.MOSTLY_Q8_0, Q.Q8_0),
    "q4_0": (FT.MOSTLY_Q4_0, Q.Q4_0),
}
# model_type -> llama.cpp architecture
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}

# quant name -> llama.cpp ftype name (llama_cpp.LLAMA_FTYPE_*) for llama.cpp's quantizer.
K_QUANTS: dict[str, str] = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
GGUF_QUANTS: tuple[str, ...] = (*DIRECT_QUANTS, *K_QUANTS)
_BLOCK_QUANTS = (Q.Q8_0, Q.Q4_0)


# --------------------------------------------------------------- quantizers
def quantizer_name() -> str:
    """Which block quantizer :func:`quantize_blocks` uses (recorded in reports)."""
    return "vnmini.kernels"


def quantize_blocks(w: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Q8_0/Q4_0 blocks (uint8 [rows, bytes_per_row]) of an f32 matrix.

    vnmini's own block quantizers (``vnmini.kernels``); tests check them
    bit-exact against ``gguf.quants.quantize``, llama.cpp's Python reference.
    """
    from vnmini.kernels import quantize_q4_0, quantize_q8_0

    w = np.ascontiguousarray(w, dtype=np.float32)
    fn = {Q.Q8_0: quantize_q8_0, Q.Q4_0: quantize_q4_0}[qtype]
    return np.asarray(fn(w), dtype=np.uint8).reshape(w.shape[0], -1)


def _encode(w: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return w.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return w.astype(np.float16)
    if qtype == Q.BF16:
        return gguf.quants.quantize(w, Q.BF16)
    return quantize_blocks(w, qtype)


# ----------------------------------------------------------------- helpers
def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotary layout (halves) → llama.cpp's (interleaved pairs), per head.

    Same as ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py; works
    for weights [n_head*head_dim, in] and biases [n_head*head_dim].
    """
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def gguf_arch(cfg) -> str:
    """llama.cpp's architecture for a model type (Mistral is written as llama, as llama.cpp's converter does)."""
    return GGUF_ARCH[cfg.model_type]


def gguf_tensors(model) -> list[tuple[str, torch.Tensor, bool]]:
    """(GGUF name, f32 tensor, is_output_head) in llama.cpp's order and layout."""
    cfg = model.config
    # llama.cpp's llama arch rotates interleaved pairs; its qwen2 arch uses HF's halves (NEOX), unpermuted.
    permute = gguf_arch(cfg) == "llama"
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: list[tuple[str, torch.Tensor, bool]] = [
        ("token_embd.weight", sd["model.embed_tokens.weight"], cfg.tie_word_embeddings)]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", sd[p + "input_layernorm.weight"], False))
        for src, dst in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            for kind in ("weight", "bias"):
                t = sd.get(f"{p}self_attn.{src}_proj.{kind}")
                if t is None:
                    continue
                if permute and src == "q":
                    t = permute_qk(t, cfg.num_attention_heads)
                elif permute and src == "k":
                    t = permute_qk(t, cfg.num_key_value_heads)
                out.append((f"{b}{dst}.{kind}", t, False))
        out.append((b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], False))
        for src, dst in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
            out.append((f"{b}{dst}.weight", sd[f"{p}mlp.{src}_proj.weight"], False))
    out.append(("output_norm.weight", sd["model.norm.weight"], False))
    if not cfg.tie_word_embeddings:
        out.append(("output.weight", sd["lm_head.weight"], True))
    return out


def tensor_type(name: str, shape: tuple[int, ...], quant: str,
                is_head: bool) -> tuple[gguf.GGMLQuantizationType, str | None]:
    """The GGML type a tensor gets under a direct quant, and why it fell back (or None)."""
    if len(shape) == 1:
        return Q.F32, None  # norms and biases: tiny, and precision-critical
    want = DIRECT_QUANTS[quant][1]
    if quant == "q4_0" and is_head:
        want = Q.Q8_0
    if want in _BLOCK_QUANTS and shape[-1] % 32:
        return Q.F16, f"{name}: f16 (row width {shape[-1]} is not a multiple of 32, needed by {want.name.lower()})"
    return want, None


def _check_output(output: Path, force: bool) -> Path:
    output = Path(output)
    if output.suffix != ".gguf":
        raise VnminiError(f"{output}: the output must end in .gguf (e.g. -o model-q8_0.gguf).")
    if output.is_dir():
        raise VnminiError(f"{output}: is a folder; give a file name such as {output / 'model.gguf'}.")
    check_output(output, "gguf", force)
    # The folder is created only when writing; here find the nearest existing ancestor.
    existing = output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise VnminiError(f"{output}: {existing} is a file, not a folder; choose another -o.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VnminiError(f"{output}: the folder {existing} is not writable; choose another -o.")
    return output


def _load(checkpoint) -> Any:
    from vnmini.checkpoint import Checkpoint, load_checkpoint

    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
        if ckpt.tokenizer is None:
            raise VnminiError(f"{ckpt.path}: has no tokenizer.json; a GGUF needs the tokenizer inside — "
                              "save the checkpoint with its tokenizer.")
    else:
        path = Path(checkpoint)
        if path.is_file() and path.suffix == ".gguf":
            raise VnminiError(f"{path}: is already a GGUF; export from the checkpoint folder it came from.")
        ckpt = load_checkpoint(path, dtype=torch.float32, require_tokenizer=True)
    cfg = ckpt.config
    if cfg.model_type not in GGUF_ARCH:
        raise VnminiError(f"{ckpt.path}: architecture {cfg.model_type!r} is not exported to GGUF; vnmini writes "
                          f"{', '.join(GGUF_ARCH)} checkpoints.")
    window = cfg.extra.get("sliding_window")
    if window and window < cfg.max_position_embeddings:
        raise VnminiError(f"{ckpt.path}: sliding-window attention ({window} < context {cfg.max_position_embeddings}) "
                          "has no equivalent in llama.cpp's llama architecture; export ONNX, or set sliding_window "
                          "to null in config.json if the model was trained without it.")
    if ckpt.tokenizer.vocab_size > cfg.vocab_size:
        raise VnminiError(f"{ckpt.path}: tokenizer has {ckpt.tokenizer.vocab_size} tokens but vocab_size is "
                          f"{cfg.vocab_size}; the tokenizer does not belong to this model.")
    return ckpt


def _size_label(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}".replace(".0", "")
    return str(n)


# ------------------------------------------------------------------- write
def write_gguf(ckpt, path: Path, quant: str, name: str | None = None, license: str | None = None,
               progress: bool = False) -> list[str]:
    """Write ``ckpt`` to ``path`` (no temp/rename here) in a direct quant. Returns the fallbacks."""
    from rich.progress import Progress

    from vnmini._version import __version__
    from vnmini.export.gguf_tokenizer import add_tokenizer_metadata

    cfg, model, tok, prov = ckpt.config, ckpt.model, ckpt.tokenizer, ckpt.provenance or {}
    ftype = DIRECT_QUANTS[quant][0]
    w = gguf.GGUFWriter(str(path), arch=gguf_arch(cfg))
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or prov.get("name") or Path(ckpt.path).name)
    w.add_license(license or prov.get("license") or "mit")
    w.add_size_label(_size_label(model.num_parameters()))
    w.add_description(f"Vietnamese small language model made with vnmini {__version__}")
    w.add_quantized_by(f"vnmini {__version__}")
    w.add_languages(["vi"])
    w.add_string("vnmini.version", __version__)
    w.add_string("vnmini.provenance", json.dumps(prov, ensure_ascii=False, default=str))
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer_metadata(w, tok, cfg.vocab_size)

    fallbacks: list[str] = []
    tensors = gguf_tensors(model)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"writing {quant}", total=len(tensors))
        for tname, t, is_head in tensors:
            arr = t.numpy()
            qtype, why = tensor_type(tname, arr.shape, quant, is_head)
            if why:
                fallbacks.append(why)
            data = _encode(arr, qtype)
            w.add_tensor(tname, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
            bar.advance(task)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return fallbacks


def llama_quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """Run llama.cpp's quantizer ``src`` → ``dst`` for a K-quant; one-line error on failure."""
    import llama_cpp
    from llama_cpp._logger import set_verbose
    from llama_cpp._utils import suppress_stdout_stderr

    set_verbose(False)  # llama.cpp's per-tensor log lines go nowhere unless they are errors
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[quant])
    params.nthread = int(threads or 0)
    # llama.cpp prints per-tensor fallback warnings straight to stderr; the
    # fallbacks are read back from the file and reported instead.
    with suppress_stdout_stderr(disable=False):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise VnminiError(f"{dst.name}: llama.cpp's quantizer failed for {quant} (code {rc}); the model's "
                          "widths may not fit this type — use q8_0/f16, or widths that are multiples of 256.")


def tensor_types(path: str | Path) -> dict[str, str]:
    """GGUF tensor name -> GGML type name (lowercase)."""
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name.lower() for t in r.tensors}


def _kquant_fallbacks(types: dict[str, str]) -> list[str]:
    """Matrices llama.cpp could not give a K-quant (rows not a multiple of 256)."""
    return [f"{name}: {ty} (llama.cpp's fallback; K-quants need rows that are a multiple of 256)"
            for name, ty in types.items()
            if name.endswith(".weight") and "norm" not in name and "_k" not in ty]


def to_gguf(
    checkpoint: str | Path | Any,
    output: str | Path,
    quant: str = "q8_0",
    *,
    force: bool = False,
    verify: bool = True,
    verify_text: str | Path | None = None,
    name: str | None = None,
    license: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    keep_failed: bool = False,
) -> ExportResult:
    """Export a checkpoint folder (or a loaded :class:`vnmini.checkpoint.Checkpoint`) to GGUF.

    ``quant`` is one of :data:`GGUF_QUANTS`. With ``verify`` (default) the file
    is checked against torch through llama-cpp-python and a report
    ``<output stem>.verify.md`` / ``.verify.json`` is written beside it;
    ``verify_text`` (a string or a text file) is the held-out text for bits per
    byte (default: vnmini's bundled Vietnamese sample).

    The file is verified under its temporary name: one that fails never reaches
    ``output`` (with ``keep_failed`` it is kept as ``<stem>.failed.gguf`` for
    inspection, with its report) and :class:`VnminiError` says why. An old report
    beside ``output`` is removed before anything is written, so a file and its
    report always describe each other, even after a kill.
    """
    quant = quant.lower()
    if quant not in GGUF_QUANTS:
        raise VnminiError(f"--quant {quant!r} is unknown; choose one of {', '.join(GGUF_QUANTS)}.")
    output = _check_output(Path(output), force)
    verify_text = read_verify_text(verify_text) if verify else None  # a bad --verify-text fails before writing
    ckpt = _load(checkpoint)
    from vnmini.export.gguf_verify import report_paths, verify_gguf, write_report

    for stale in report_paths(output):  # the old file's report must not outlive it
        stale.unlink(missing_ok=True)
    report = None
    with atomic_path(output) as tmp:
        if quant in DIRECT_QUANTS:
            fallbacks = write_gguf(ckpt, tmp, quant, name=name, license=license, progress=progress)
        else:
            fd, src = tempfile.mkstemp(prefix=f".{output.name}.{os.getpid()}.", suffix=".f32.tmp", dir=output.parent)
            os.close(fd)
            src = Path(src)
            try:
                write_gguf(ckpt, src, "f32", name=name, license=license, progress=progress)
                llama_quantize(src, tmp, quant, threads)
            finally:
                src.unlink(missing_ok=True)
            fallbacks = _kquant_fallbacks(tensor_types(tmp))
        types = dict(Counter(tensor_types(tmp).values()))
        size = tmp.stat().st_size
        if verify:
            report = verify_gguf(tmp, ckpt, quant=quant, text=verify_text, threads=threads)
            report["file"] = str(output)
            report["export"] = {"quant": quant, "size_bytes": size, "tensor_types": types,
                                "fallbacks": fallbacks, "block_quantizer": quantizer_name(),
                                "checkpoint": str(ckpt.path)}
            if not report["passed"]:
                _refuse_failed(tmp, output, report, keep_failed)
    result = ExportResult(path=output, format="gguf", quant=quant, size_bytes=size, tensor_types=types,
                          fallbacks=fallbacks)
    if report is not None:
        result.verify = report
        result.report_paths = write_report(report, output)
    return result


def _failed_checks(report: dict[str, Any]) -> str:
    bad = [name for name, ok in (("tokenization", report["tokenization"].get("equal")),
                                 ("chat prompt ids", report["chat"].get("equal")),
                                 ("logits", report["logits"].get("ok") is not False),
                                 ("finite logits", report.get("checks", {}).get("finite", True)))
           if not ok]
    return ", ".join(bad) or "see the report"


def _refuse_failed(tmp: Path, output: Path, report: dict[str, Any], keep: bool) -> None:
    """A file that failed its own verification never sits under the final name."""
    from vnmini.export.gguf_verify import write_report

    why = _failed_checks(report) + " differ"
    if keep:
        failed = output.with_name(output.stem + ".failed.gguf")
        os.replace(tmp, failed)
        report["file"] = str(failed)
        write_report(report, failed)
        raise VnminiError(f"{output}: verification FAILED ({why}); nothing was written there. The failed file "
                          f"and its report are kept as {failed} (--keep-failed).")
    raise VnminiError(f"{output}: verification FAILED ({why}); nothing was written. Fix the cause, or pass "
                      "--keep-failed to keep the file for inspection, or --no-verify to skip the checks.")
