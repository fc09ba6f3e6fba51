"""Multiple-choice accuracy (VMLU format) by log-likelihood, on any backend: it uses only
``Generator.logits(ids)``, like :mod:`vnmini.eval.bpb`.

    gen = vnmini.load("runs/quickstart/chat.q8_0.gguf")
    eval_mc(gen, "vmlu_dev.jsonl")        # {'accuracy': 0.31, 'accuracy_norm': 0.33, 'n': 744}
    eval_mc(gen, sample_mc_path())        # the small sample bundled with vnmini

Multiple choice (:func:`eval_mc`)
    One JSON object per line: ``question``, ``choices`` (``"A. ..."`` — the
    letter prefix is stripped; any number of choices), ``answer`` (a letter, or
    a 0-based index). Each choice is scored as the continuation
    ``" " + choice`` of the prompt ``"Câu hỏi: {question}\\nTrả lời:"``, tokenized
    separately (so the prompt's tokens are identical across choices): one
    forward per choice. ``accuracy`` picks the highest summed log-probability;
    ``accuracy_norm`` the highest log-probability per UTF-8 byte of the choice
    (removes the bias toward short answers).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vnmini.assets import SAMPLE_MC, asset_path
from vnmini.errors import VnminiError
from vnmini.eval.bpb import check_generator
from vnmini.jsonl import iter_jsonl
from vnmini.progress import progress_bar
from vnmini.runtime.generator import Generator

MC_PROMPT = "Câu hỏi: {question}\nTrả lời:"
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]\s*")


def _token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target_t | logits_t) for each row, in float64."""
    lp = torch.log_softmax(torch.as_tensor(np.asarray(logits)).double(), dim=-1)
    return lp.gather(1, torch.as_tensor(targets, dtype=torch.long)[:, None])[:, 0].numpy()


def _parse_answer(ans: Any, n_choices: int, where: str) -> int:
    if isinstance(ans, bool):
        raise VnminiError(f"{where}: 'answer' must be a letter (A, B, ...) or a 0-based index.")
    if isinstance(ans, int):
        idx = ans
    elif isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().isalpha():
        idx = ord(ans.strip().upper()) - ord("A")
    elif isinstance(ans, str) and ans.strip().isdigit():
        idx = int(ans.strip())
    else:
        raise VnminiError(f"{where}: 'answer' {ans!r} is not a letter (A, B, ...) or a 0-based index.")
    if not 0 <= idx < n_choices:
        raise VnminiError(f"{where}: 'answer' {ans!r} is outside the {n_choices} choices.")
    return idx


def strip_letter(choice: str) -> str:
    """``"B. Hà Nội"`` -> ``"Hà Nội"`` (VMLU choices carry a letter prefix)."""
    return _LETTER_PREFIX.sub("", choice, count=1).strip()


def read_mc(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Validated items ``{id, question, choices (prefix stripped), answer (index)}`` from a VMLU-style JSONL."""
    path = Path(path)
    if not path.is_file():
        raise VnminiError(f"{path}: no such file; pass a JSONL file with question/choices/answer per line.")
    n = 0
    for where, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise VnminiError(f"{where}: expected a JSON object with question/choices/answer.")
        q, choices = obj.get("question"), obj.get("choices")
        if not isinstance(q, str) or not q.strip():
            raise VnminiError(f"{where}: missing or empty 'question'.")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and strip_letter(c) for c in choices)):
            raise VnminiError(f"{where}: 'choices' must be a list of at least 2 non-empty strings.")
        if "answer" not in obj:
            raise VnminiError(f"{where}: missing 'answer' (a letter such as \"B\").")
        n += 1
        yield {
            "id": str(obj.get("id", where.rsplit(":", 1)[1])),  # default: the line number
            "question": q.strip(),
            "choices": [strip_letter(c) for c in choices],
            "answer": _parse_answer(obj["answer"], len(choices), where),
        }
    if n == 0:
        raise VnminiError(f"{path}: no questions in the file; one JSON object per line.")


def score_choices(generator: Generator, question: str, choices: Sequence[str]) -> list[tuple[float, int]]:
    """(summed log-probability, UTF-8 bytes) of each choice as the continuation of the question prompt."""
    check_generator(generator)
    tok = generator.tokenizer
    ctx = tok.encode(MC_PROMPT.format(question=question), add_bos=True)
    out = []
    for choice in choices:
        cont = tok.encode(" " + choice)
        if not cont:
            raise VnminiError(f"choice {choice!r} tokenizes to nothing; check the file.")
        room = generator.context_length - len(cont)
        if room < 1:
            raise VnminiError(f"choice {choice[:40]!r}... is longer than the model's context; shorten it.")
        full = ctx[-room:] + cont  # keep the end of a long question
        first = len(full) - len(cont) - 1  # the row that predicts the choice's first token
        logits = np.asarray(generator.logits(full, first=first))
        lp = _token_logprobs(logits[: len(cont)], np.asarray(cont))
        nbytes = max(1, int(tok.token_bytes[np.asarray(cont)].sum()))
        out.append((float(lp.sum()), nbytes))
    return out


def eval_mc(
    generator: Generator,
    path: str | os.PathLike,
    limit: int | None = None,
    progress: bool = False,
    return_items: bool = False,
) -> dict[str, Any]:
    """Multiple-choice accuracy of a VMLU-format JSONL, by log-likelihood (sum and per byte)."""
    items = list(read_mc(path))
    if limit is not None:
        items = items[:limit]
    correct = correct_norm = 0
    per_item = []
    with progress_bar("multiple choice", len(items), enabled=progress, transient=True) as bar:
        for it in items:
            scores = score_choices(generator, it["question"], it["choices"])
            # Ties go to the first choice (np.argmax) — deterministic, and no backend is favoured.
            pick = int(np.argmax([s for s, _ in scores]))
            pick_norm = int(np.argmax([s / b for s, b in scores]))
            correct += pick == it["answer"]
            correct_norm += pick_norm == it["answer"]
            if return_items:
                per_item.append({"id": it["id"], "answer": it["answer"], "pick": pick, "pick_norm": pick_norm,
                                 "logprobs": [s for s, _ in scores]})
            bar.advance()
    n = len(items)
    res: dict[str, Any] = {
        "accuracy": correct / n,
        "accuracy_norm": correct_norm / n,
        "n": n,
        "chance": float(np.mean([1 / len(it["choices"]) for it in items])),
        "backend": generator.backend,
    }
    if return_items:
        res["items"] = per_item
    return res


def sample_mc_path() -> Path:
    """The small Vietnamese multiple-choice sample shipped with vnmini (written by the vnmini authors)."""
    return asset_path(SAMPLE_MC)
