"""Sequence-level distillation: the teacher writes text the student then trains on (``vnmini teacher generate``).

    from vnmini.training.teacher_generate import teacher_generate
    teacher_generate("runs/mini/final", "prompts.txt", "teacher.jsonl", max_new_tokens=200)
    # then: vnmini.distill(teacher_text="teacher.jsonl", tokenizer="tok/", preset="micro", ...)

Prompts (``--prompts FILE``):

* ``.txt`` -- one prompt per non-empty line;
* ``.jsonl`` -- ``{"prompt": ...}`` (or ``{"text": ...}``) per line, or ``{"messages": [...]}``
  for chat (roles system/user/assistant; the teacher answers the last turn).

Output JSONL, one line per (prompt, sample):

* continuation: ``{"prompt", "completion", "text": prompt + completion, "teacher"}`` --
  ``vnmini data prepare teacher.jsonl`` (field ``text``) or ``distill(teacher_text=...)``;
* chat: ``{"messages": [..., {"role": "assistant", "content": answer}], "teacher"}`` --
  exactly the input of ``vnmini sft``.

The teacher may be anything :func:`vnmini.load` opens (checkpoint, ``.gguf``, ONNX
folder) -- tokenizers may differ from the student's, which is the point of
sequence-level distillation. A GGUF whose tokenizer vnmini can't rebuild (e.g. a
SentencePiece Gemma) runs on llama.cpp's own tokenizer (with vnmini's sampler, the
file's chat template and vnmini's normalization, as every backend). Prompts are
normalized (NFC, tone style) like every input.

Resumable: lines go to ``OUT.partial`` as they are made (sample i uses seed
``seed + i``, so a rerun continues with the same draws) and the file is renamed to
``OUT`` only when every prompt is done. A run that fails or is interrupted keeps a
non-empty partial (the resume point) and removes an empty one. A teacher whose
logits turn NaN/inf (a corrupt file) fails with the teacher's path, on every backend.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError
from vnmini.jsonl import iter_jsonl
from vnmini.outputs import check_output
from vnmini.progress import progress_bar
from vnmini.runtime.sampling import DEFAULTS
from vnmini.text.normalization import normalize

ROLES = ("system", "user", "assistant")


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """``[{"prompt": str} | {"messages": [...]}]`` from a .txt or .jsonl file, normalized, checked."""
    path = Path(path)
    if not path.is_file():
        raise VnminiError(f"--prompts {path}: no such file; give a .txt (one prompt per line) or a .jsonl.")
    items: list[dict[str, Any]] = []
    if path.suffix != ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise VnminiError(f"--prompts {path}: not UTF-8 text ({e.reason}); save it as UTF-8.") from e
        items = [{"prompt": normalize(line)} for line in lines if line.strip()]
    for where, obj in iter_jsonl(path) if path.suffix == ".jsonl" else ():
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]:
            msgs = obj["messages"]
            for m in msgs:
                if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                    raise VnminiError(f"{where}: each message needs role in {ROLES} and a string content.")
            items.append({"messages": [{"role": m["role"], "content": normalize(m["content"])} for m in msgs]})
        elif isinstance(obj, dict) and isinstance(obj.get("prompt", obj.get("text")), str):
            items.append({"prompt": normalize(obj.get("prompt", obj.get("text")))})
        else:
            raise VnminiError(f"{where}: needs \"prompt\" (or \"text\") or a non-empty \"messages\" list.")
    if not items:
        raise VnminiError(f"--prompts {path}: no prompts in the file.")
    return items


def open_teacher(path: str | Path, backend: str | None = None, device: str = "cpu", threads: int | None = None):
    """A text generator for ``path`` (:func:`vnmini.load`: any checkpoint, ONNX folder or GGUF llama.cpp opens).

    ``backend="llama.cpp"`` is a synonym of ``gguf``. A GGUF whose tokenizer vnmini can't rebuild runs on
    llama.cpp's own tokenizer; sampling, normalization and the chat template are vnmini's, as for any model.
    """
    from vnmini.runtime.loader import load

    return load(path, backend="gguf" if backend == "llama.cpp" else backend, device=device, threads=threads)


def _count_lines(partial: Path) -> int:
    """Complete lines in ``partial``; a line cut by a crash is dropped from the file."""
    if not partial.is_file():
        return 0
    data = partial.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        partial.write_bytes(data)
    return data.count(b"\n")


def teacher_generate(
    teacher: str | Path,
    prompts: str | Path,
    out: str | Path,
    *,
    mode: str = "auto",
    system: str | None = None,
    samples: int = 1,
    max_new_tokens: int = DEFAULTS.max_new_tokens,
    temperature: float = DEFAULTS.temperature,
    top_k: int = DEFAULTS.top_k,
    top_p: float = DEFAULTS.top_p,
    repetition_penalty: float = DEFAULTS.repetition_penalty,
    seed: int = 0,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Write the teacher's continuations / chat answers for ``prompts`` to the JSONL ``out``.

    An existing ``out`` is replaced only with ``force`` (and only if it is a file).

    ``mode``: auto (``messages`` items chat, ``prompt`` items continue), complete, or chat
    (each prompt becomes a user turn, after ``system`` if given). Returns a summary.
    """
    if mode not in ("auto", "complete", "chat"):
        raise VnminiError(f"--mode {mode!r}: choose auto, complete or chat.")
    if samples < 1 or max_new_tokens < 1:
        raise VnminiError("--samples and --max-new-tokens must be >= 1.")
    out = Path(out)
    check_output(out, "file", force, flag="--out")
    items = read_prompts(prompts)
    if mode == "complete" and any("messages" in it for it in items):
        raise VnminiError(f"--mode complete: {prompts} holds chat messages; use --mode chat or auto.")
    gen = open_teacher(teacher, backend, device, threads)
    name = str(teacher)
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    total = len(items) * samples
    done = _count_lines(partial)
    t0 = time.perf_counter()
    new_chars = 0
    bar = progress_bar("teacher generate", total, enabled=progress, completed=done)
    try:
        with partial.open("a", encoding="utf-8") as f:
            for i in range(done, total):
                it = items[i // samples]
                kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty, seed=seed + i)
                chat = "messages" in it or mode == "chat"
                if chat:
                    msgs = it.get("messages") or ([{"role": "system", "content": system}] if system else []) + [
                        {"role": "user", "content": it["prompt"]}]
                    if msgs[-1]["role"] == "assistant":
                        msgs = msgs[:-1]  # answer the last user turn afresh
                    answer = gen.chat(msgs, **kw)
                    rec: dict[str, Any] = {"messages": [*msgs, {"role": "assistant", "content": answer}],
                                           "teacher": name}
                    new_chars += len(answer)
                else:
                    comp = gen.complete(it["prompt"], **kw)
                    rec = {"prompt": it["prompt"], "completion": comp, "text": it["prompt"] + comp, "teacher": name}
                    new_chars += len(comp)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                bar.update(completed=i + 1)
    except BaseException:
        # An empty partial resumes nothing and would only look like progress; a non-empty one is the resume point.
        if partial.is_file() and partial.stat().st_size == 0:
            partial.unlink()
        raise
    finally:
        bar.close()
    os.replace(partial, out)
    return {"out": str(out), "records": total, "resumed_at": done, "new_chars": new_chars,
            "elapsed_s": time.perf_counter() - t0, "backend": getattr(gen, "backend", "?")}


__all__ = ["teacher_generate", "read_prompts", "open_teacher"]
