"""A small Vietnamese chat set built from the statute corpus (``vnmini data sft-from-statutes``).

Each article "Điều N. <tiêu đề>\\n<nội dung>" of a code becomes a few
question → answer conversations whose answers are the article's own words, so
a model fine-tuned on them answers questions about the law in the law's
language (the quickstart's chat model)::

    from vnmini.data.sft_statutes import build_statute_sft
    stats = build_statute_sft("corpus/", "data/sft.jsonl")   # corpus/ from `vnmini corpus fetch`

Kinds of questions (all three per article, in a seeded order):

- "Điều 5 của Bộ luật lao động năm 2019 quy định gì?"   → the article (title + body, cut at a line end)
- "Điều 5 của Bộ luật lao động năm 2019 có tiêu đề là gì?" → "Điều 5 ... có tiêu đề: <tiêu đề>."
- "Bộ luật lao động năm 2019 quy định thế nào về <tiêu đề>?" → "Theo Điều 5 ...: <body>"

``replay`` (``--replay`` on the CLI) also mixes in the articles themselves as
``{"text": ...}`` lines, which SFT trains on as plain prose, so fine-tuning for chat
doesn't pull the model off the statute register (measured: ``benchmarks/sft_cost.py``).

Only the training codes of a fetched corpus are used (``train/*.jsonl``); the
held-out code stays unseen. Plain ``.txt`` statutes and ``.jsonl`` files of
``{"text": ...}`` articles are accepted too.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vnmini.atomic import atomic_path
from vnmini.errors import VnminiError
from vnmini.outputs import check_output
from vnmini.text.normalization import normalize

_ARTICLE = re.compile(r"^Điều (\d+[a-zđ]*)\.\s*([^\n]*)\n?(.*)$", re.S)
_CODE_NAME = re.compile(r"ban hành (Bộ luật [^.,;\n]+)")
_YEAR = re.compile(r"(\d{4})$")


def _code_name(preamble: str | None, stem: str) -> str:
    m = _CODE_NAME.search(preamble or "")
    name = m.group(1).strip() if m else stem.replace("-", " ").capitalize()
    year = _YEAR.search(stem)
    if year and year.group(1) not in name:
        name += f" năm {year.group(1)}"
    return name


def _read_file(path: Path) -> list[str]:
    if path.suffix == ".txt":
        from vnmini.data.fetch import split_articles

        return split_articles(path.read_text(encoding="utf-8"))
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise VnminiError(f"{path}:{n}: expected a JSON object with a \"text\" field ({e}).") from e
    return texts


def _inputs(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            train = p / "train"
            found = sorted(train.glob("*.jsonl")) if train.is_dir() else sorted([*p.glob("*.jsonl"), *p.glob("*.txt")])
            if not found:
                raise VnminiError(f"{p}: no .jsonl/.txt statutes inside; run `vnmini corpus fetch {p}` first.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise VnminiError(f"{p}: no such file or folder; point at the folder `vnmini corpus fetch` wrote.")
    return files


def _cut(text: str, max_chars: int) -> str:
    """At most ``max_chars``, cut at the last line end (else sentence end, else word) before the limit."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for sep in ("\n", ". ", "; ", " "):
        k = head.rfind(sep)
        if k > max_chars // 3:
            return head[: k + (1 if sep != "\n" else 0)].rstrip()
    return head.rstrip()


def article_conversations(code: str, number: str, title: str, body: str, max_chars: int) -> list[dict[str, Any]]:
    """The question → answer conversations for one article."""
    ref = f"Điều {number} của {code}"
    title = title.strip().rstrip(".")
    full = _cut(f"Điều {number}. {title}\n{body}".strip(), max_chars)
    qa = [(f"{ref} quy định gì?", full)]
    if title:
        qa.append((f"{ref} có tiêu đề là gì?", f"{ref} có tiêu đề: {title}."))
        if body.strip():
            topic = title[0].lower() + title[1:]
            qa.append((f"{code} quy định thế nào về {topic}?", _cut(f"Theo {ref}:\n{body.strip()}", max_chars)))
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa]


def build_statute_sft(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    seed: int = 0,
    max_answer_chars: int = 1000,
    max_conversations: int | None = None,
    replay: float = 0.0,
    force: bool = False,
) -> dict[str, Any]:
    """Write the chat JSONL to ``out`` (atomically; an existing file only with ``force``); returns counts per code.

    ``replay`` > 0 mixes in ``{"text": article}`` lines (trained on every token, see :mod:`vnmini.training.sft`):
    whole training articles, in a seeded order, until their characters reach ``replay`` times the answers'.
    """
    if not (math.isfinite(replay) and replay >= 0):
        raise VnminiError(f"--replay: must be a number >= 0 (got {replay}).")
    check_output(out, "file", force, flag="--out")
    paths = _inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    convs: list[dict[str, Any]] = []
    articles: list[str] = []
    per_code: dict[str, int] = {}
    for path in paths:
        texts = [normalize(t) for t in _read_file(path)]
        preamble = next((t for t in texts if not t.startswith("Điều ")), None)
        code = _code_name(preamble, path.stem)
        n0 = len(convs)
        for t in texts:
            m = _ARTICLE.match(t)
            if m and (m.group(2).strip() or m.group(3).strip()):
                convs += article_conversations(code, m.group(1), m.group(2), m.group(3), max_answer_chars)
                articles.append(t)
        per_code[code] = len(convs) - n0
    if not convs:
        raise VnminiError(f"{', '.join(map(str, paths))}: no articles (\"Điều N. ...\") found; is this statute text?")
    random.Random(seed).shuffle(convs)
    if max_conversations:
        convs = convs[:max_conversations]
    prose: list[dict[str, Any]] = []
    if replay:
        want = replay * sum(len(m["content"]) for c in convs for m in c["messages"] if m["role"] == "assistant")
        rng = random.Random(seed + 1)
        got = 0
        for t in rng.sample(articles, len(articles)):
            if got >= want:
                break
            prose.append({"text": t})
            got += len(t)
    # Spread the text lines among the conversations, keeping the conversations' order (so SFT holds out the same
    # ones with and without replay, and the validation bpb stays comparable).
    slots = [True] * len(convs) + [False] * len(prose)
    random.Random(seed + 2).shuffle(slots)
    conv_it, prose_it = iter(convs), iter(prose)
    lines = [next(conv_it) if is_conv else next(prose_it) for is_conv in slots]
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in lines), encoding="utf-8")
    return {"out": str(out), "conversations": len(convs), "text_records": len(lines) - len(convs), "codes": per_code}
