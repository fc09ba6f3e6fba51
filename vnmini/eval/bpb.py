"""Bits per byte on text, the quality number that compares any backend on the same
footing: it uses only ``Generator.logits(ids)``, so a checkpoint, its GGUF and its
ONNX export are scored by the same code and land in one table (multiple choice is
:mod:`vnmini.eval.mc`).

    gen = vnmini.load("runs/quickstart/chat.q8_0.gguf")
    eval_text(gen, "held_out.txt")        # {'bpb': 1.92, 'ppl': 8.1, 'tokens': ..., 'bytes': ...}

Text (:func:`eval_text`)
    Documents are what :func:`vnmini.data.corpus.read_documents` yields for the path
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
    :func:`text_prefix` cuts the fixed eval slice the quickstart and the recipe sweep
    score (the first N bytes, at a line end).

NaN/inf logits in any window (a corrupt file, diverged weights) are a
:class:`VnminiError` naming the model's path, not a NaN score.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vnmini.errors import VnminiError
from vnmini.metrics import BpbMeter
from vnmini.paths import names_existing_path
from vnmini.progress import progress_bar
from vnmini.runtime.generator import Generator, check_logits


# ---------------------------------------------------------------- helpers
def check_generator(gen: Generator) -> None:
    if gen.tokenizer is None:
        raise VnminiError("this model has no tokenizer; evaluate a checkpoint, GGUF or ONNX folder saved with one.")
    if gen.context_length < 2:
        raise VnminiError(f"the model's context length is {gen.context_length}; evaluation needs at least 2.")


def _documents(path_or_text: str | os.PathLike) -> list[str]:
    if names_existing_path(path_or_text):
        path = Path(path_or_text)
        if not path.exists():
            raise VnminiError(f"{path}: no such file or folder; pass a UTF-8 .txt/.jsonl/.parquet file or folder.")
        from vnmini.data.corpus import read_documents

        return list(read_documents(path))
    text = str(path_or_text)
    if not text.strip():
        raise VnminiError("eval_text: the text is empty; pass a file path or some text.")
    return [text]


def text_prefix(text: str, nbytes: int) -> str:
    """The first ``nbytes`` UTF-8 bytes of ``text``, cut back to a line end (never mid-character):
    a fixed eval slice that every run and vocabulary scores the same way."""
    raw = text.encode()
    if len(raw) <= nbytes:
        return text
    cut = raw[:nbytes].decode("utf-8", "ignore")
    return cut[: cut.rfind("\n") + 1] or cut


# ------------------------------------------------------------------- text
def token_stream(gen: Generator, path_or_text: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scored): ``<s> doc1 <s> doc2 ...`` and a mask of the positions that are scored (not the separators).

    The separator is the tokenizer's BOS, or its EOS when it has none (GPT-2/Qwen2 style).
    """
    check_generator(gen)
    tok = gen.tokenizer
    ids: list[int] = []
    scored: list[bool] = []
    for doc in _documents(path_or_text):
        d = [tok.doc_sep_id, *tok.encode(doc)]
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
    meter = BpbMeter(generator.tokenizer.token_bytes)
    n = len(ids)
    windows = 0
    done = 1  # positions < done have been scored (position 0 is never predicted)
    starts = list(range(0, max(n - window, 0) + stride, stride))
    with progress_bar("bits per byte", len(starts), enabled=progress, transient=True) as bar:
        begin = 0
        while done < n:
            end = min(begin + window, n)
            # Logit row r predicts position begin + r + 1; score positions [done, end), so only rows
            # first.. are needed (the backend skips the output layer before them).
            first = done - 1 - begin
            logits = np.asarray(generator.logits(ids[begin:end].tolist(), first=first))
            check_logits(logits, getattr(generator, "source", "the model"))
            windows += 1
            pos = np.arange(done, end)  # logits row r predicts position done + r
            keep = scored[pos]
            if keep.any():
                meter.add(logits[: len(pos)][keep], ids[pos[keep]])
            done = end
            begin += stride
            bar.advance()
    if meter.tokens == 0:
        raise VnminiError("nothing to score: the text has no tokens after the BOS markers.")
    return {
        **meter.as_dict(),
        "windows": windows,
        "context": window,
        "stride": stride,
        "backend": generator.backend,
    }
