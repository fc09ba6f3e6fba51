"""Teachers for logit distillation and the offline teacher cache (``vnmini teacher cache``).

This module owns three things:

* :func:`load_teacher` -- a vnmini checkpoint or a Hugging Face Llama/Mistral/Qwen2
  folder in inference mode (bf16 on CUDA, fp32 on CPU), on any device;
* :func:`check_same_tokenizer` -- logit distillation compares teacher and student
  distributions id by id, so the two must share the tokenizer; a mismatch is refused
  with a message that names both vocabularies and points at sequence-level
  distillation (``vnmini teacher generate``);
* the cache: :func:`write_teacher_cache` runs the teacher once over a token shard set
  and :class:`TeacherCache` serves its top-k distributions to the student.

    from vnmini.training.teacher_cache import write_teacher_cache, TeacherCache
    write_teacher_cache("runs/teacher/final", "shards/", "cache/", k=32, seq_len=256)
    cache = TeacherCache("cache/")
    ids, logprobs = cache.lookup(batch.positions, 256)      # [B, 256, k] each

Alignment. The student reads the train split as non-overlapping windows of
``seq_len + 1`` tokens (window w = tokens ``[w·T, w·T + T]``, ``vnmini.training.pretrain.TokenWindows``),
so the cache is defined over exactly those windows: the teacher reads the T inputs of
window w, and position ``p = w·T + t`` holds its distribution for token ``p + 1``. A
``Batch`` row starting at ``positions[b]`` therefore looks up ``[positions[b], +T)``.

Layout::

    cache/manifest.json          format, teacher, tokenizer hash/vocab, k, temperature,
                                 seq_len, the shard set it belongs to, parts, bytes/token
    cache/part_00000.safetensors windows [0, W) : ids [W·T, k] uint16|int32,
    cache/part_00001.safetensors   logprobs [W·T, k] float16 (sorted, descending),
    ...                            rest_logprob [W·T] float16 = log(1 - sum top-k probs)

The leftover mass is stored as a log-probability because fp16 holds small and
near-one masses far better that way. On reading, the k log-probs are shifted so that
their probabilities sum to exactly ``1 - rest`` (fp16 rounding would otherwise move
mass into or out of the rest bucket); ``vnmini.kernels.sparse_kd_loss`` then sees the
stored leftover mass as its rest bucket.

Resumable and parallel: the manifest is written first; parts are written atomically,
one by one, and a rerun skips the parts already on disk. Under ``torchrun`` rank r
writes parts r, r + N, ...; rank 0 completes the manifest when all are there.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vnmini.atomic import atomic_path, write_json
from vnmini.data.shards import ShardReader, load_manifest
from vnmini.errors import VnminiError
from vnmini.paths import describe_kind, path_kind, weights_fingerprint
from vnmini.progress import progress_bar
from vnmini.text.tokenizer import VnTokenizer
from vnmini.training import dist

FORMAT = "vnmini-teacher-cache/1"
MANIFEST = "manifest.json"
PART = "part_{:05d}.safetensors"
# Plan fields a rerun must agree on before it may reuse parts on disk.
PLAN_KEYS = ("format", "teacher", "tokenizer_hash", "vocab_size", "k", "temperature", "seq_len", "split",
             "shards_fingerprint", "windows", "windows_per_part", "parts", "id_dtype")
# A rerun that differs only in these (another --max-windows) keeps every part that is still whole:
# part p always holds windows [p·windows_per_part, ...), so a longer cache extends a shorter one.
EXTENT_KEYS = ("windows", "parts")


# ----------------------------------------------------------------- teachers
@dataclass
class Teacher:
    model: torch.nn.Module
    tokenizer: VnTokenizer | None
    source: str
    device: torch.device

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """Float32 logits [B, T, V] on the teacher's device (V cut to ``vocab_size``: padded rows dropped).

        ``no_grad`` rather than ``inference_mode``: the KD kernels save the teacher
        logits for backward, which inference tensors forbid.
        """
        x = input_ids.to(self.device, non_blocking=self.device.type == "cuda")
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self.model(x)
        else:
            out = self.model(x)
        if vocab_size is not None:
            out = out[..., :vocab_size]
        return out.float()


def load_teacher(path: str | Path, device: str = "auto", dtype: str | torch.dtype | None = None) -> Teacher:
    """A checkpoint folder (vnmini or HF Llama/Mistral/Qwen2, safetensors) as a frozen teacher.

    ``device``: auto | cpu | cuda | cuda:N; ``dtype`` defaults to bf16 on CUDA, fp32 on CPU.
    """
    from vnmini.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        raise VnminiError(f"--teacher {path}: a GGUF can only teach sequence-level (`vnmini teacher generate`); "
                          "logit distillation needs a checkpoint folder.")
    dev = dist.pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ck = load_checkpoint(path, dtype=dtype, device=dev)
    model = ck.model.eval()
    model.requires_grad_(False)
    return Teacher(model=model, tokenizer=ck.tokenizer, source=str(path), device=dev)


def check_same_tokenizer(teacher: Teacher, student_hash: str, student_vocab: int, student_source: str) -> None:
    """Refuse logit distillation across tokenizers, naming both vocabularies."""
    tt = teacher.tokenizer
    hint = ("logit distillation compares distributions id by id: give the student a vocabulary adopted from the "
            f"teacher's (`vnmini tokenizer adopt --from {teacher.source} ...`), or use sequence-level distillation: "
            "`vnmini teacher generate --teacher T --prompts FILE` and train the student on the teacher's text.")
    if tt is None:
        raise VnminiError(f"--teacher {teacher.source}: has no tokenizer.json, so its vocabulary (size "
                          f"{teacher.model.config.vocab_size}) can't be checked against the student's "
                          f"({student_vocab} tokens, hash {student_hash}, {student_source}); {hint}")
    if tt.hash != student_hash or tt.vocab_size != student_vocab:
        raise VnminiError(f"vocabulary mismatch: teacher {teacher.source} has {tt.vocab_size} tokens (hash {tt.hash}), "
                          f"student {student_source} has {student_vocab} tokens (hash {student_hash}); {hint}")
    if teacher.model.config.vocab_size < student_vocab:
        raise VnminiError(f"--teacher {teacher.source}: config.json vocab_size {teacher.model.config.vocab_size} is "
                          f"smaller than its tokenizer ({student_vocab}); the checkpoint is inconsistent.")


def shards_fingerprint(data: str | Path, split: str = "train") -> str:
    """A short hash of a shard set's tokenizer, files and token counts (which stream a cache belongs to)."""
    m = load_manifest(data)
    key = json.dumps({"tok": m.get("tokenizer_hash"), "split": m.get("splits", {}).get(split)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ encoding
def encode_topk(logprobs: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k log-probs [..., k] -> (fp16 log-probs, fp16 log of the leftover mass [...]) as stored.

    The leftover is ``log(1 - sum exp(logprobs))`` computed in float64 (log1p keeps it
    accurate for tiny and near-one leftovers); -inf when k covers the vocabulary.
    """
    lp = logprobs.double()
    if lp.shape[-1] >= vocab_size:
        rest = torch.full(lp.shape[:-1], -math.inf, dtype=torch.float64)
    else:
        rest = torch.log1p(-lp.exp().sum(-1).clamp(max=1.0))
    return lp.half(), rest.half()


def decode_topk(logprobs16: torch.Tensor, rest16: torch.Tensor) -> torch.Tensor:
    """Stored (fp16 log-probs, fp16 leftover) -> float32 log-probs whose mass is exactly ``1 - rest``."""
    lp = logprobs16.double()
    top_mass = -torch.expm1(rest16.double())  # 1 - rest
    shift = torch.log(top_mass.clamp_min(1e-300)) - torch.logsumexp(lp, -1)
    return (lp + shift[..., None]).float()


# ------------------------------------------------------------------- writing
def _teacher_id(teacher: Teacher) -> dict[str, Any]:
    cfg = teacher.model.config
    # The weights' fingerprint too: a teacher retrained into the same folder must not reuse the old cache.
    return {"source": teacher.source, "weights": weights_fingerprint(teacher.source),
            "parameters": cfg.num_parameters(), "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size}


def _part_ok(path: Path, positions: int, k: int) -> bool:
    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.get_slice("ids").get_shape() == [positions, k]
                    and f.get_slice("logprobs").get_shape() == [positions, k]
                    and f.get_slice("rest_logprob").get_shape() == [positions])
    except (SafetensorError, OSError, KeyError, ValueError):
        return False


def write_teacher_cache(
    teacher: str | Path | Teacher,
    data: str | Path,
    out: str | Path,
    k: int = 32,
    seq_len: int = 256,
    temperature: float = 1.0,
    batch_size: int = 8,
    windows_per_part: int = 1024,
    split: str = "train",
    device: str = "auto",
    max_windows: int | None = None,
    progress: bool = True,
    force: bool = False,
    vocab_mode: str = "full",
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``teacher`` over the ``split`` windows of shard set ``data``; write the cache to ``out``.

    ``teacher`` is a checkpoint folder, a ``.gguf`` or a loaded teacher. A teacher with a
    bigger vocabulary that contains the student's (``vnmini tokenizer adopt``) is read through
    the student's ``teacher_map.json``: ``vocab_mode`` ``full`` gathers its whole softmax onto
    the student's ids (the leftover bucket then holds the mass the student can't say),
    ``mapped`` runs its output layer cut to the student's rows (faster, renormalized);
    :mod:`vnmini.training.mapped_teacher`. ``tokenizer`` overrides the shards' own.

    Returns the manifest (with ``bytes_per_token`` and ``elapsed_s``). Reruns with the
    same settings skip finished parts (resume), and so do reruns with another
    ``max_windows`` (a longer cache keeps the shorter one's whole parts and adds the rest, a
    shorter one drops the parts past its end); a cache made with other settings is
    replaced only with ``force``; a folder of another kind never. Under ``torchrun``
    the parts are shared round-robin by the ranks.
    """
    kind = path_kind(out)
    if kind not in ("missing", "empty-folder", "teacher-cache"):
        raise VnminiError(f"-o {out}: is {describe_kind(kind)}, not a teacher cache; choose another -o.")
    from vnmini.kernels import topk_lse
    from vnmini.training.mapped_teacher import MappedTeacher, is_same_vocab, open_mapped_teacher
    from vnmini.training.pretrain import resolve_tokenizer

    env = dist.setup(device)
    try:
        reader = ShardReader(data, split)
        m = reader.manifest
        vocab = int(m["vocab_size"])
        mapped: MappedTeacher | None = None
        is_gguf = isinstance(teacher, (str, Path)) and Path(teacher).suffix == ".gguf" and Path(teacher).is_file()
        if not isinstance(teacher, (Teacher, MappedTeacher)) and not is_gguf:
            teacher = load_teacher(teacher, device=str(env.device))
        if isinstance(teacher, Teacher) and is_same_vocab(teacher, m["tokenizer_hash"], vocab):
            check_same_tokenizer(teacher, m["tokenizer_hash"], vocab, f"shards {data}")
        else:
            try:
                student_tok = resolve_tokenizer(data, tokenizer)
            except VnminiError:
                if tokenizer is None and isinstance(teacher, Teacher):
                    check_same_tokenizer(teacher, m["tokenizer_hash"], vocab, f"shards {data}")  # names both
                raise
            mapped = open_mapped_teacher(teacher, student_tok, vocab_mode, device=str(env.device),
                                         n_ctx=seq_len + 8)
        if not 1 <= k <= vocab:
            raise VnminiError(f"-k {k}: must be between 1 and the vocabulary size {vocab}.")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise VnminiError(f"--temperature {temperature}: must be a positive number.")
        ctx = teacher.model.config.max_position_embeddings if isinstance(teacher, Teacher) else 1 << 30
        if seq_len < 1 or seq_len > ctx:
            raise VnminiError(f"--seq-len {seq_len}: must be in [1, {ctx}] (the teacher's context).")
        if windows_per_part < 1 or batch_size < 1:
            raise VnminiError("--windows-per-part and --batch-size must be >= 1.")
        windows = (len(reader) - 1) // seq_len
        if max_windows is not None:
            windows = min(windows, max(0, int(max_windows)))
        if windows < 1:
            raise VnminiError(f"{data}: the {split} split has {len(reader)} tokens, "
                              f"fewer than seq_len+1 = {seq_len + 1}; lower --seq-len.")
        out = Path(out)
        n_parts = -(-windows // windows_per_part)
        plan = {
            "format": FORMAT, "teacher": mapped.describe() if mapped else _teacher_id(teacher),
            "tokenizer_hash": m["tokenizer_hash"],
            "vocab_size": vocab, "k": k, "temperature": float(temperature), "seq_len": seq_len, "split": split,
            "data": str(data), "shards_fingerprint": shards_fingerprint(data, split), "windows": windows,
            "positions": windows * seq_len, "windows_per_part": windows_per_part, "parts": n_parts,
            "id_dtype": "uint16" if vocab < 65536 else "int32", "logprob_dtype": "float16",
        }
        mpath = out / MANIFEST
        prior: dict[str, Any] = {}
        if mpath.is_file():
            prior = json.loads(mpath.read_text(encoding="utf-8"))
            diff = [key for key in PLAN_KEYS if prior.get(key) != plan[key]]
            settings = [key for key in diff if key not in EXTENT_KEYS]
            if settings and not force:
                raise VnminiError(f"{out}: holds a teacher cache made with other settings ({', '.join(settings)}); "
                                  "pass --force to replace it, or choose another -o.")
            if diff and env.rank == 0:
                for part in out.glob("part_*.safetensors"):
                    tail = part.stem.rsplit("_", 1)[-1]
                    p = int(tail) if tail.isdigit() else -1
                    # Another extent: parts past the new end, or of another length (the old last one), go.
                    if settings or not (0 <= p < n_parts and _part_ok(part, _part_windows(p, plan) * seq_len, k)):
                        part.unlink()
                write_json(mpath, {**plan, "complete": False})
        elif env.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            try:
                write_json(mpath, {**plan, "complete": False})
            except BaseException:
                if not any(out.iterdir()):  # ours and empty: leave nothing behind
                    out.rmdir()
                raise
        dist.barrier(env)

        mine = [p for p in range(env.rank, n_parts, env.world_size)]
        todo = [p for p in mine if not _part_ok(out / PART.format(p), _part_windows(p, plan) * seq_len, k)]
        id_dtype = np.dtype(plan["id_dtype"])
        bar = progress_bar("teacher cache", sum(_part_windows(p, plan) for p in mine),
                           enabled=progress and env.rank == 0, fields="windows")
        t0 = time.perf_counter()
        done_windows = sum(_part_windows(p, plan) for p in mine if p not in todo)
        outside, fresh = 0.0, sum(_part_windows(p, plan) for p in todo) * seq_len
        bar.update(completed=done_windows)
        try:
            for p in todo:
                w0 = p * windows_per_part
                nw = _part_windows(p, plan)
                ids = np.empty((nw * seq_len, k), dtype=id_dtype)
                lps = np.empty((nw * seq_len, k), dtype=np.float16)
                rest = np.empty(nw * seq_len, dtype=np.float16)
                for b0 in range(0, nw, batch_size):
                    nb = min(batch_size, nw - b0)
                    x = np.stack([reader.read((w0 + b0 + j) * seq_len, seq_len) for j in range(nb)])
                    if mapped is not None:
                        slp = mapped.student_logprobs(torch.from_numpy(x.astype(np.int64)), temperature)
                        slp = slp.reshape(nb * seq_len, vocab)
                        if mapped.vocab_mode == "full":
                            outside += float((1 - slp.double().exp().sum(-1)).clamp_min(0).sum())
                        lp, top = slp.topk(k, -1)
                        # Full mode: the leftover also holds the teacher's mass outside the student's vocabulary.
                        lp16, rlp16 = encode_topk(lp, mapped.teacher_vocab if mapped.vocab_mode == "full" else vocab)
                    else:
                        logits = teacher.logits(torch.from_numpy(x), vocab).reshape(nb * seq_len, vocab)
                        lp, top, _ = topk_lse(logits, k, temperature)
                        lp16, rlp16 = encode_topk(lp.cpu(), vocab)
                    sl = slice(b0 * seq_len, (b0 + nb) * seq_len)
                    ids[sl] = top.cpu().numpy().astype(id_dtype)
                    lps[sl] = lp16.numpy()
                    rest[sl] = rlp16.numpy()
                    done_windows += nb
                    bar.update(completed=done_windows)
                meta = {"first_window": str(w0), "windows": str(nw), "first_position": str(w0 * seq_len),
                        "seq_len": str(seq_len), "k": str(k)}
                with atomic_path(out / PART.format(p)) as tmp:
                    save_file({"ids": ids, "logprobs": lps, "rest_logprob": rest}, str(tmp), metadata=meta)
        finally:
            bar.close()
        dist.barrier(env)
        manifest = {**plan, "complete": False}
        if env.rank == 0:
            missing = [p for p in range(n_parts) if not (out / PART.format(p)).is_file()]
            if missing:
                raise VnminiError(f"{out}: parts {missing[:5]} are missing; "
                                  "rerun the same command to finish the cache.")
            nbytes = sum((out / PART.format(p)).stat().st_size for p in range(n_parts))
            manifest.update(complete=True, bytes=nbytes, bytes_per_token=nbytes / plan["positions"],
                            elapsed_s=round(time.perf_counter() - t0, 3))
            if mapped is not None and mapped.vocab_mode == "full" and fresh and env.world_size == 1:
                # Teacher probability on tokens the student can't say (what --teacher-vocab mapped would drop).
                manifest["teacher_mass_outside_student_vocab"] = outside / fresh
            if fresh:
                manifest["positions_per_s"] = round(fresh / max(time.perf_counter() - t0, 1e-9), 1)
            elif prior.get("complete") and prior.get("windows") == plan["windows"]:  # a no-op rerun: keep the cost
                manifest.update({k: prior[k] for k in ("elapsed_s", "positions_per_s",
                                                       "teacher_mass_outside_student_vocab") if k in prior})
            write_json(mpath, manifest)
        return manifest
    finally:
        dist.teardown(env)


def _part_windows(p: int, plan: dict[str, Any]) -> int:
    return min(plan["windows_per_part"], plan["windows"] - p * plan["windows_per_part"])


# ------------------------------------------------------------------- reading
class TeacherCache:
    """Read-only view of a complete cache: ``lookup(positions, length) -> (ids, logprobs)``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        mpath = self.folder / MANIFEST
        if not mpath.is_file():
            raise VnminiError(f"--teacher-cache {folder}: no {MANIFEST}; write a cache with `vnmini teacher cache`.")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VnminiError(f"{mpath}: invalid JSON ({e.msg}); rerun `vnmini teacher cache`.") from e
        m = self.manifest
        if m.get("format") != FORMAT:
            raise VnminiError(f"{mpath}: format {m.get('format')!r} is not {FORMAT}; rerun `vnmini teacher cache`.")
        if not m.get("complete"):
            raise VnminiError(f"--teacher-cache {folder}: unfinished; rerun the same `vnmini teacher cache` command to "
                              "complete it.")
        self.k: int = int(m["k"])
        self.seq_len: int = int(m["seq_len"])
        self.windows: int = int(m["windows"])
        self.positions: int = int(m["positions"])
        self.temperature: float = float(m["temperature"])
        self.tokenizer_hash: str = m["tokenizer_hash"]
        self._per_part = int(m["windows_per_part"]) * self.seq_len
        self._open: dict[int, Any] = {}

    def _part(self, p: int):
        f = self._open.get(p)
        if f is None:
            path = self.folder / PART.format(p)
            want = min(self._per_part, self.positions - p * self._per_part)
            if not _part_ok(path, want, self.k):
                raise VnminiError(f"{path}: missing or damaged; "
                                  "delete it and rerun `vnmini teacher cache` to rewrite it.")
            f = safe_open(str(path), framework="numpy")
            self._open[p] = f
        return f

    def read(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw (ids, fp16 logprobs, fp16 rest_logprob) of positions ``[start, start + n)``."""
        if start < 0 or start + n > self.positions:
            raise VnminiError(f"{self.folder}: positions [{start}, {start + n}) are outside the cache "
                              f"(0..{self.positions}); "
                              "the cache covers fewer windows than this run reads — rewrite it over the whole split.")
        ids, lps, rest = [], [], []
        pos, end = start, start + n
        while pos < end:
            p = pos // self._per_part
            lo = pos - p * self._per_part
            take = min(end - pos, self._per_part - lo)
            f = self._part(p)
            ids.append(f.get_slice("ids")[lo : lo + take])
            lps.append(f.get_slice("logprobs")[lo : lo + take])
            rest.append(f.get_slice("rest_logprob")[lo : lo + take])
            pos += take
        return np.concatenate(ids), np.concatenate(lps), np.concatenate(rest)

    def lookup(self, positions: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ids (long) and log-probs (float32) ``[B, length, k]`` for rows starting at ``positions``.

        The log-probs are renormalized so their probabilities sum to ``1 - rest`` exactly
        (module docstring), which makes the kernels' rest bucket the stored leftover mass.
        """
        pos = np.asarray(positions, dtype=np.int64)
        if (pos < 0).any():
            raise VnminiError("the batch source gives rows that are not windows of the token stream; a teacher cache "
                              "needs token-shard windows (distill from shards, not SFT conversations).")
        parts = [self.read(int(p), length) for p in pos]
        ids = torch.from_numpy(np.stack([a[0] for a in parts]).astype(np.int64))
        lp = decode_topk(torch.from_numpy(np.stack([a[1] for a in parts])),
                         torch.from_numpy(np.stack([a[2] for a in parts])))
        return ids, lp

    def nbytes(self) -> int:
        return sum((self.folder / PART.format(p)).stat().st_size for p in range(int(self.manifest["parts"])))


__all__ = ["Teacher", "load_teacher", "encode_topk", "decode_topk", "check_same_tokenizer", "shards_fingerprint",
           "write_teacher_cache", "TeacherCache", "FORMAT"]
