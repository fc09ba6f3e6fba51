"""Start a student's token embeddings from its teacher's (``--init-embeddings TEACHER``).

A student whose vocabulary was adopted from a teacher (``vnmini tokenizer adopt``) names,
for each of its tokens, the teacher's row of the same token. The teacher learned those
rows from far more text than the user's corpus holds: which syllables are alike, which
are rare spellings of common ones. Half of a small student's weights are its embedding
(``tiny`` at 16k tokens: 3.1M of 5.5M, tied with the output layer), and the corpus
teaches its rare rows little; starting them from the teacher's geometry hands that
knowledge over before the first step, at no training cost::

    vnmini distill --teacher-cache cache/ --data shards/ --init-embeddings gemma.gguf ...

    from vnmini.training.teacher_embed import teacher_embedding_rows, project_rows
    rows = teacher_embedding_rows("gemma-3-270m.gguf", student_tok)   # [V_student, H_teacher]
    init = project_rows(rows, width=192, rms=0.02)                       # [V_student, 192]

The teacher's rows (a GGUF's ``token_embd``, dequantized by ``gguf.quants``; a checkpoint's
input embedding) are centered and projected onto their top principal directions, as
many as the student is wide (PCA: the directions along which the teacher's tokens differ
most, so distances between tokens are kept as well as a narrower space can keep them),
then scaled to the root-mean-square of the student's fresh init so the optimizer's
settings still fit. A student wider than the teacher keeps its random init in the
columns past the teacher's width. Only a fresh model is touched: ``--resume`` loads its
checkpoint over it.

Measured once (Gemma-3-270M → ``tiny``, the Gemma benchmark's KD run, README): the student
learns faster early but ended worse (held-out 0.804 vs 0.761 bpb), so it is opt-in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vnmini.errors import VnminiError


def teacher_embedding_rows(teacher: str | Path, student_tok: Any) -> np.ndarray:
    """The teacher's input-embedding row of each student token, ``[V_student, H_teacher]`` float32.

    ``teacher``: a GGUF or a checkpoint folder (HF Llama/Mistral/Qwen2 or vnmini) whose vocabulary is the
    student's or the one it was adopted from (checked token by token, as for distillation).
    """
    from vnmini.training.mapped_teacher import gguf_tokens, id_map_for, open_mapped_teacher

    path = Path(teacher)
    if not path.exists():
        raise VnminiError(f"--init-embeddings {teacher}: no such file or folder; give the teacher GGUF or "
                          "checkpoint folder the tokenizer was adopted from.")
    if path.is_file() and path.suffix == ".gguf":
        from gguf.quants import dequantize

        tokens, reader = gguf_tokens(path)
        id_map = id_map_for(tokens, str(path), student_tok)
        tensor = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if tensor is None:
            raise VnminiError(f"--init-embeddings {teacher}: the GGUF has no token_embd.weight tensor.")
        data = np.asarray(tensor.data)[id_map]  # rows are independent blocks, so pick them before dequantizing
        if data.dtype == np.uint8:
            data = dequantize(data, tensor.tensor_type)
        return np.ascontiguousarray(data, dtype=np.float32)
    mapped = open_mapped_teacher(path, student_tok, "full", device="cpu")  # checks the vocabulary, as distill does
    weight = mapped.model.model.embed_tokens.weight.detach().float()
    return weight[mapped.id_map.cpu()].numpy().astype(np.float32)


def project_rows(rows: np.ndarray, width: int, rms: float) -> np.ndarray:
    """``rows`` centered and projected on their top ``min(width, H)`` principal directions, scaled to ``rms``.

    Returns ``[V, min(width, H)]`` float32 whose entries have root-mean-square ``rms``.
    """
    x = np.asarray(rows, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    k = min(width, x.shape[1], x.shape[0])
    u, s, _ = np.linalg.svd(x, full_matrices=False)  # x = u s vᵀ: the coordinates on the top axes are u s
    z = u[:, :k] * s[:k]
    scale = rms / max(float(np.sqrt(np.mean(z * z))), 1e-30)
    return (z * scale).astype(np.float32)


def init_embeddings_from(model: Any, teacher: str | Path, student_tok: Any) -> dict[str, Any]:
    """Overwrite ``model``'s input embedding (tied output too) with the teacher's rows, projected; returns a record."""
    emb = model.model.embed_tokens.weight
    v, width = emb.shape
    if student_tok.vocab_size != v:
        raise VnminiError(f"--init-embeddings {teacher}: the model has {v} token rows, the tokenizer "
                          f"{student_tok.vocab_size}; they must agree.")
    rows = teacher_embedding_rows(teacher, student_tok)
    with torch.no_grad():
        rms = float(emb.float().pow(2).mean().sqrt())
        z = torch.from_numpy(project_rows(rows, width, rms))
        emb[:, : z.shape[1]] = z.to(emb.dtype)
    return {"teacher": str(teacher), "teacher_width": int(rows.shape[1]), "columns": int(z.shape[1]), "rms": rms}
