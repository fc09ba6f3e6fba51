"""Teachers whose vocabulary contains the student's (an adopted vocabulary, ``vnmini tokenizer adopt``).

The student's token ``s`` is the teacher's token ``map[s]`` (``teacher_map.json``,
checked token string by token string against the teacher before any work). A mapped
teacher reads student ids, runs on the teacher ids, and returns log-probabilities over
the student's ids::

    from vnmini.training.mapped_teacher import open_mapped_teacher
    t = open_mapped_teacher("gemma-3-270m.gguf", student_tokenizer, vocab_mode="mapped")
    lp = t.student_logprobs(input_ids)       # [B, T, V_student] float32, sum <= 1 per row

Two vocabulary modes:

* ``full`` (exact): the teacher's softmax over its whole vocabulary, gathered onto the
  student's ids; the mass on tokens the student can't say (``1 − Σ``) becomes the KD
  loss's leftover bucket, so the KL is exact over what the student can say.
* ``mapped`` (fast): the teacher's output layer cut to the student's rows, so the
  softmax runs over the student's vocabulary only (the teacher renormalized onto it).
  For Gemma-3-270M, whose 262k-row output costs more than its 18 layers, this is the
  difference between ~130 and several hundred tokens/s on 2 cores.
  ``measure_outside_mass`` says how much mass that drops on the user's text.

Backends: a torch checkpoint folder (HF Llama/Mistral/Qwen2 or vnmini; ``mapped``
slices ``lm_head``), or a GGUF through llama-cpp-python with all-position logits
(``mapped`` runs a GGUF rewritten with only the student's rows of the embedding/output
matrices and the student's vocabulary, cached in ``~/.cache/vnmini/teachers/``).
A GGUF teacher whose weights fit in float32 (≤ 2 GiB, ≤ a quarter of RAM) is also
rewritten with its quantized weights dequantized to float32: llama.cpp multiplies
quantized weights by activations it rounds to 8 bits, which moves Gemma-3-270M's
distribution by 0.0064 nats (7 % of argmaxes) from the weights' own function, while
float32 weights match transformers' reference to 1e-6 nats and prefill 1.5x faster on
AVX2 (386 vs 261 positions/s; benchmarks/results_distill_gemma.md).
When the teacher's tokenizer adds BOS, each window is read after a BOS (teachers such
as Gemma are far worse without it); the student's targets are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vnmini.errors import VnminiError
from vnmini.paths import weights_fingerprint

VOCAB_MODES = ("full", "mapped")
_ID_KEYS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.mask_token_id", "tokenizer.ggml.cls_token_id")
_PER_TOKEN_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
_ROW_TENSORS = ("token_embd.weight", "output.weight")


def refuse_vocab(teacher: str, teacher_vocab: int, student: str, student_vocab: int, student_hash: str) -> VnminiError:
    return VnminiError(
        f"vocabulary mismatch: teacher {teacher} has {teacher_vocab} tokens, the student ({student}) has "
        f"{student_vocab} (hash {student_hash}) and was not adopted from it; logit distillation needs the student's "
        f"vocabulary to be the teacher's or a subset of it: `vnmini tokenizer adopt --from {teacher} --corpus TEXT "
        "-o tok/` (then `vnmini data prepare` with tok/), or distill sequence-level with `vnmini teacher generate`.")


def id_map_for(teacher_tokens: list[str], teacher: str, student_tok: Any) -> np.ndarray:
    """Student id -> teacher id: the student's adopted map (verified), or identity for an equal vocabulary."""
    from vnmini.text.adopt import check_teacher_tokens

    n = student_tok.vocab_size
    student_tokens = [student_tok.id_to_token(i) for i in range(n)]
    tmap = getattr(student_tok, "teacher_map", None)
    if tmap is None:
        if student_tokens == list(teacher_tokens):
            return np.arange(n, dtype=np.int64)
        raise refuse_vocab(teacher, len(teacher_tokens), student_tok.source, n, student_tok.hash)
    check_teacher_tokens(student_tokens, teacher_tokens, tmap, teacher, student_tok.source)
    return np.asarray(tmap.student_to_teacher, dtype=np.int64)


class MappedTeacher:
    """Common part: the map, the BOS rule, the mode; subclasses give ``_logits_rows``."""

    def __init__(self, source: str, id_map: np.ndarray, teacher_vocab: int, vocab_mode: str,
                 bos_id: int | None) -> None:
        if vocab_mode not in VOCAB_MODES:
            raise VnminiError(f"--teacher-vocab {vocab_mode!r}: choose one of {', '.join(VOCAB_MODES)}.")
        self.source = source
        self.id_map = torch.from_numpy(id_map)
        self.teacher_vocab = teacher_vocab
        self.vocab_mode = vocab_mode
        self.bos_id = bos_id  # teacher id to read each window after, or None
        self.student_vocab = len(id_map)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "weights": weights_fingerprint(self.source), "vocab_size": self.teacher_vocab,
                "student_vocab": self.student_vocab, "vocab_mode": self.vocab_mode,
                "bos_prefix": self.bos_id is not None, "backend": self.backend}

    backend = "?"

    def student_logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs [B, T, V_student] (float32, CPU) of the next token at every position of ``input_ids``."""
        raise NotImplementedError


class TorchMappedTeacher(MappedTeacher):
    """A torch checkpoint (``vnmini.training.teacher_cache.Teacher``) read through the map."""

    backend = "torch"

    def __init__(self, teacher: Any, id_map: np.ndarray, vocab_mode: str = "full") -> None:
        tok = teacher.tokenizer
        vocab = int(teacher.model.config.vocab_size)
        bos = tok.bos_id if tok is not None and tok.add_bos else None
        super().__init__(teacher.source, id_map, vocab, vocab_mode, bos)
        self.teacher = teacher
        self.model = teacher.model
        self.device = teacher.device
        self._dev_map = self.id_map.to(self.device)
        # Mapped mode: the output layer cut to the student's rows (a [V_student, H] copy).
        self._head = self.model.lm_head.weight[self._dev_map].detach() if vocab_mode == "mapped" else None

    @torch.no_grad()
    def student_logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        x = self._dev_map[input_ids.to(self.device)]
        if self.bos_id is not None:
            x = torch.cat([torch.full_like(x[:, :1], self.bos_id), x], 1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            h = self.model.hidden_states(x)
        if self.bos_id is not None:
            h = h[:, 1:]
        out = []
        for row in h:  # one row at a time: full-vocabulary logits of a whole batch would be gigabytes
            if self._head is not None:
                z = F.linear(row.float(), self._head.float()) / temperature
                out.append(torch.log_softmax(z, -1))
            else:
                z = self.model.lm_head(row).float()[:, : self.teacher_vocab] / temperature
                out.append(z[:, self._dev_map] - torch.logsumexp(z, -1, keepdim=True))
        return torch.stack(out).cpu()


# ------------------------------------------------------------------- GGUF
def gguf_tokens(path: Path) -> tuple[list[str], Any]:
    import gguf

    from vnmini.text.gguf_vocab import field_value

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise VnminiError(f"--teacher {path}: not a readable GGUF ({e}).") from e
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise VnminiError(f"--teacher {path}: the GGUF has no tokenizer.ggml.tokens; it can't teach logits.")
    return tokens, reader


def f32_bytes(reader: Any, rows: int | None = None) -> int:
    """Bytes of the GGUF's tensors in float32, the embedding/output matrices cut to ``rows`` rows."""
    total = 0
    for t in reader.tensors:
        n = int(np.prod([int(d) for d in t.shape]))
        if rows is not None and t.name in _ROW_TENSORS:
            n = n // int(t.shape[-1]) * rows
        total += 4 * n
    return total


def f32_fits(nbytes: int) -> bool:
    """Float32 teacher weights are used when they take ≤ 2 GiB and ≤ a quarter of this machine's memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return nbytes <= min(2 << 30, ram // 4)


def trim_gguf(src: str | Path, keep: np.ndarray, out: str | Path, dequantize: bool = False) -> Path:
    """Write ``src`` with only the vocabulary entries and embedding/output rows ``keep`` (in that order).

    ``dequantize``: quantized and float16 matrices are written as float32 (exact: the same values).
    """
    import gguf
    from gguf.quants import dequantize as dequantize_block

    from vnmini.atomic import atomic_path
    from vnmini.text.gguf_vocab import field_value

    reader = gguf.GGUFReader(str(src))
    keep = np.asarray(keep, dtype=np.int64)
    new_id = {int(t): s for s, t in enumerate(keep)}
    arch = field_value(reader, "general.architecture")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        for f in reader.fields.values():
            if f.name.startswith("GGUF.") or f.name == "general.architecture":
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            val = f.contents()
            if f.name in _PER_TOKEN_KEYS:
                val = [val[i] for i in keep]
            elif f.name in _ID_KEYS:
                if int(val) not in new_id:
                    continue
                val = new_id[int(val)]
            elif f.name == "tokenizer.ggml.merges":
                kept_text = {val_t for val_t in (field_value(reader, "tokenizer.ggml.tokens")[i] for i in keep)}
                val = [m for m in val if all(p in kept_text for p in (*m.split(" ", 1), m.replace(" ", "", 1)))]
            w.add_key_value(f.name, val, vtype, sub)
        for t in reader.tensors:
            data = np.asarray(t.data)
            if t.name in _ROW_TENSORS:
                data = np.ascontiguousarray(data[keep])
            quantized = data.dtype == np.uint8
            if dequantize and quantized:
                data, quantized = dequantize_block(data, t.tensor_type).astype(np.float32), False
            elif dequantize and data.dtype == np.float16:
                data = data.astype(np.float32)
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type if quantized else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def trimmed_path(src: Path, keep: np.ndarray, dequantize: bool = False) -> Path:
    """Where the rewritten copy of ``src`` for this map lives (a cache keyed by the file, the map, the dtype)."""
    st = src.stat()
    key = hashlib.sha256(json.dumps([str(src.resolve()), st.st_size, st.st_mtime_ns, dequantize]).encode()
                         + np.asarray(keep, dtype=np.int64).tobytes()).hexdigest()[:16]
    from vnmini.data.fetch import cache_dir

    return cache_dir() / "teachers" / f"{src.stem}-{len(keep)}{'-f32' if dequantize else ''}-{key}.gguf"


class GgufMappedTeacher(MappedTeacher):
    """A GGUF teacher through llama-cpp-python (all-position logits, f16 KV cache).

    ``f32_weights``: run the weights dequantized to float32 (None: when they fit, see ``f32_fits``).
    """

    backend = "gguf"

    def __init__(self, path: str | Path, student_tok: Any, vocab_mode: str = "mapped", n_ctx: int = 512,
                 threads: int | None = None, f32_weights: bool | None = None) -> None:
        import gguf
        from llama_cpp import Llama

        from vnmini.text.gguf_vocab import field_value

        path = Path(path)
        tokens, reader = gguf_tokens(path)
        id_map = id_map_for(tokens, str(path), student_tok)
        add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", False))
        bos = field_value(reader, "tokenizer.ggml.bos_token_id")
        bos = int(bos) if add_bos and bos is not None else None
        super().__init__(str(path), id_map, len(tokens), vocab_mode, bos)
        trim = vocab_mode == "mapped" and len(id_map) < len(tokens)
        if f32_weights is None:  # already float32 needs no rewrite
            packed = any(t.tensor_type not in (gguf.GGMLQuantizationType.F32,) for t in reader.tensors)
            f32_weights = packed and f32_fits(f32_bytes(reader, len(id_map) if trim else None))
        self.f32_weights = bool(f32_weights)
        del reader
        run_path = path
        if trim:
            if bos is not None and bos not in set(id_map.tolist()):
                raise VnminiError(f"--teacher {path}: its BOS token is not in the student's vocabulary; adopt again "
                                  "(`vnmini tokenizer adopt` keeps it) or use --teacher-vocab full.")
            keep = id_map
            self._in_map = None  # the trimmed file speaks student ids
            self._bos_in = int(np.flatnonzero(id_map == bos)[0]) if bos is not None else None
        else:
            keep = np.arange(len(tokens), dtype=np.int64)
            self._in_map = id_map
            self._bos_in = bos
        if trim or self.f32_weights:
            run_path = trimmed_path(path, keep, self.f32_weights)
            if not run_path.is_file():
                trim_gguf(path, keep, run_path, dequantize=self.f32_weights)
        self.run_path = run_path
        try:
            # No flash attention: it is ~15 % faster here (310 vs 208-280 positions/s) but its f16 arithmetic moves
            # Gemma's distribution by 0.008 nats (4 % of argmaxes), and the one KD run from such a cache scored
            # 0.785 held-out against 0.753 (benchmarks/results_distill_gemma_flash.md).
            self.llm = Llama(str(run_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                             verbose=False, n_threads=threads or max(1, min(4, os.cpu_count() or 1)))
        except (ValueError, RuntimeError) as e:
            raise VnminiError(f"--teacher {run_path}: llama.cpp cannot load it ({e}).") from e
        self.n_ctx = n_ctx

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "f32_weights": self.f32_weights}

    def student_logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        rows = []
        for row in input_ids.cpu().numpy():
            ids = row if self._in_map is None else self._in_map[row]
            pre = [self._bos_in] if self._bos_in is not None else []
            seq = [*pre, *(int(i) for i in ids)]
            if len(seq) > self.n_ctx:
                raise VnminiError(f"windows of {len(row)} tokens (+BOS) exceed the teacher context {self.n_ctx}.")
            self.llm.reset()
            self.llm.eval(seq)
            z = torch.from_numpy(np.array(self.llm.scores[len(pre): len(seq)], dtype=np.float32)) / temperature
            if self._in_map is None:
                rows.append(torch.log_softmax(z, -1))
            else:
                rows.append(z[:, self.id_map] - torch.logsumexp(z, -1, keepdim=True))
        return torch.stack(rows)


def open_mapped_teacher(teacher: Any, student_tok: Any, vocab_mode: str = "full", device: str = "auto",
                        n_ctx: int = 512, threads: int | None = None) -> MappedTeacher:
    """A GGUF path, a checkpoint path or a loaded ``Teacher`` whose vocabulary contains the student's."""
    from vnmini.training.teacher_cache import Teacher, load_teacher

    if isinstance(teacher, MappedTeacher):
        return teacher
    if not isinstance(teacher, Teacher):
        path = Path(teacher)
        if path.is_file() and path.suffix == ".gguf":
            return GgufMappedTeacher(path, student_tok, vocab_mode, n_ctx=n_ctx, threads=threads)
        teacher = load_teacher(path, device=device)
    tt = teacher.tokenizer
    if tt is None:
        raise VnminiError(f"--teacher {teacher.source}: has no tokenizer.json, so its vocabulary can't be checked "
                          "against the student's; add the teacher's tokenizer files.")
    tokens = [tt.id_to_token(i) for i in range(tt.vocab_size)]
    return TorchMappedTeacher(teacher, id_map_for(tokens, teacher.source, student_tok), vocab_mode)


def is_same_vocab(teacher: Any, student_hash: str, student_vocab: int) -> bool:
    """A torch ``Teacher`` with exactly the student's tokenizer (the plain, unmapped path)."""
    tt = getattr(teacher, "tokenizer", None)
    return tt is not None and tt.hash == student_hash and tt.vocab_size == student_vocab


def measure_outside_mass(teacher: MappedTeacher, windows: list[np.ndarray]) -> float:
    """Mean teacher probability on tokens outside the student's vocabulary (needs ``vocab_mode='full'``)."""
    if teacher.vocab_mode != "full":
        raise VnminiError("measuring the dropped mass needs the full teacher vocabulary (--teacher-vocab full).")
    tot, n = 0.0, 0
    for w in windows:
        lp = teacher.student_logprobs(torch.from_numpy(np.asarray(w, dtype=np.int64))[None])
        tot += float((1 - lp.double().exp().sum(-1)).sum())
        n += lp.shape[1]
    return tot / max(n, 1)


__all__ = ["open_mapped_teacher", "MappedTeacher", "TorchMappedTeacher", "GgufMappedTeacher", "trim_gguf",
           "id_map_for", "is_same_vocab", "measure_outside_mass", "refuse_vocab", "VOCAB_MODES"]
