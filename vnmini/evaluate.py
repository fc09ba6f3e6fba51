"""Quality numbers that compare any backend on the same footing: bits per byte on
text and multiple-choice accuracy (VMLU format). Both use only
``Generator.logits(ids)``, so a checkpoint, its GGUF and its ONNX export are
scored by the same code and land in one table.

    gen = vnmini.load("runs/quickstart/chat.q8_0.gguf")
    eval_text(gen, "held_out.txt")        # {'bpb': 1.92, 'ppl': 8.1, 'tokens': ..., 'bytes': ...}
    eval_mc(gen, "vmlu_dev.jsonl")        # {'accuracy': 0.31, 'accuracy_norm': 0.33, 'n': 744}

Text (:func:`eval_text`)
    Documents are what :func:`vnmini.corpus.read_documents` yields for the path
    (one per ``.txt`` file, one per ``.jsonl`` record; a literal string is one
    document), normalized. They are tokenized and laid end to end as
    ``<s> doc1 <s> doc2 ...``; the BOS positions are context only, never scored.
    Windows of the model's context length slide over that stream with ``stride``
    (default half the context): each window is one forward pass and scores only
    the tokens no earlier window scored, so every token after the first is
    predicted exactly once and, past the first window, with at least
    ``context - stride`` tokens of left context. bits per byte = total NLL /
    (ln 2 × UTF-8 bytes of the scored tokens); perplexity = exp(mean token NLL)
    (tokenizer-dependent, so compare bpb across vocabularies).

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

import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vnmini.errors import VnminiError
from vnmini.generation import Generator
from vnmini.jsonl import iter_jsonl
from vnmini.metrics import bits_per_byte

MC_PROMPT = "Câu hỏi: {question}\nTrả lời:"
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]\s*")


# ---------------------------------------------------------------- helpers
def _progress(enabled: bool, description: str, total: int):
    """A rich progress bar (or a no-op stand-in) for slow loops."""
    if not enabled:
        class _Null:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def advance(self, n: int = 1) -> None:
                pass

        return _Null()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class _Bar:
        def __enter__(self):
            self.p = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              transient=True, console=Console(stderr=True))  # stdout stays clean for --json
            self.p.__enter__()
            self.task = self.p.add_task(description, total=total)
            return self

        def __exit__(self, *a):
            return self.p.__exit__(*a)

        def advance(self, n: int = 1) -> None:
            self.p.advance(self.task, n)

    return _Bar()


def _token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target_t | logits_t) for each row, in float64."""
    lp = torch.log_softmax(torch.as_tensor(np.asarray(logits)).double(), dim=-1)
    return lp.gather(1, torch.as_tensor(targets, dtype=torch.long)[:, None])[:, 0].numpy()


def _check_generator(gen: Generator) -> None:
    if gen.tokenizer is None:
        raise VnminiError("this model has no tokenizer; evaluate a checkpoint, GGUF or ONNX folder saved with one.")
    if gen.context_length < 2:
        raise VnminiError(f"the model's context length is {gen.context_length}; evaluation needs at least 2.")


def _documents(path_or_text: str | os.PathLike) -> list[str]:
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and len(path_or_text) < 4096
        and os.path.exists(path_or_text)
    ):
        path = Path(path_or_text)
        if not path.exists():
            raise VnminiError(f"{path}: no such file or folder; pass a UTF-8 .txt/.jsonl/.parquet file or folder.")
        from vnmini.corpus import read_documents

        return list(read_documents(path))
    text = str(path_or_text)
    if not text.strip():
        raise VnminiError("eval_text: the text is empty; pass a file path or some text.")
    return [text]


# ------------------------------------------------------------------- text
def token_stream(gen: Generator, path_or_text: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scored): ``<s> doc1 <s> doc2 ...`` and a mask of the positions that are scored (not BOS)."""
    _check_generator(gen)
    tok = gen.tokenizer
    ids: list[int] = []
    scored: list[bool] = []
    for doc in _documents(path_or_text):
        d = tok.encode(doc, add_bos=True)
        ids += d
        scored += [False] + [True] * (len(d) - 1)
    return np.asarray(ids, dtype=np.int64), np.asarray(scored, dtype=bool)


def eval_text(
    generator: Generator,
    path_or_text: str | os.PathLike,
    stride: int | None = None,
    max_tokens: int | None = None,
    context: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Bits per byte and perplexity of ``path_or_text`` (a file/folder path or literal text).

    ``context``: window length (default: the model's context length);
    ``stride``: how far each window moves (default half the window);
    ``max_tokens``: score only the first this many tokens of the stream.
    """
    ids, scored = token_stream(generator, path_or_text)
    if max_tokens is not None:
        if max_tokens < 1:
            raise VnminiError(f"--max-tokens {max_tokens}: must be >= 1.")
        ids, scored = ids[: max_tokens + 1], scored[: max_tokens + 1]
    window = min(context or generator.context_length, generator.context_length)
    if window < 2:
        raise VnminiError(f"--context {context}: must be >= 2.")
    stride = stride or max(1, window // 2)
    if not 1 <= stride <= window - 1:
        raise VnminiError(f"--stride {stride}: must be between 1 and the window length minus 1 ({window - 1}).")
    if len(ids) < 2:
        raise VnminiError("the text tokenizes to fewer than 2 tokens; give more text.")
    token_bytes = generator.tokenizer.token_bytes
    n = len(ids)
    nll, nbytes, ntok, windows = 0.0, 0, 0, 0
    done = 1  # positions < done have been scored (position 0 is never predicted)
    starts = list(range(0, max(n - window, 0) + stride, stride))
    with _progress(progress, "bits per byte", len(starts)) as bar:
        begin = 0
        while done < n:
            end = min(begin + window, n)
            logits = np.asarray(generator.logits(ids[begin:end].tolist()))
            windows += 1
            # Logit row r predicts position begin + r + 1; score positions [done, end).
            rows = np.arange(done - 1 - begin, end - 1 - begin)
            pos = rows + begin + 1
            keep = scored[pos]
            if keep.any():
                lp = _token_logprobs(logits[rows[keep]], ids[pos[keep]])
                nll -= float(lp.sum())
                nbytes += int(token_bytes[ids[pos[keep]]].sum())
                ntok += int(keep.sum())
            done = end
            begin += stride
            bar.advance()
    if ntok == 0:
        raise VnminiError("nothing to score: the text has no tokens after the BOS markers.")
    return {
        "bpb": bits_per_byte(nll, nbytes),
        "ppl": math.exp(nll / ntok),
        "nll": nll,
        "tokens": ntok,
        "bytes": nbytes,
        "windows": windows,
        "context": window,
        "stride": stride,
        "backend": generator.backend,
    }


# --------------------------------------------------------- multiple choice
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
    _check_generator(generator)
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
        logits = np.asarray(generator.logits(full))
        rows = np.arange(len(full) - len(cont) - 1, len(full) - 1)
        lp = _token_logprobs(logits[rows], np.asarray(cont))
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
    with _progress(progress, "multiple choice", len(items)) as bar:
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
    return Path(__file__).parent / "data" / "vi_mc_sample.jsonl"
