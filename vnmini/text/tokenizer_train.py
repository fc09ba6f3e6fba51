"""Training the Vietnamese byte-level BPE, and measuring tokenizers (fertility).

This module owns ``vnmini tokenizer train`` and ``vnmini tokenizer eval``.

    from vnmini.text.tokenizer_train import train_tokenizer, tokenizer_fertility
    tok = train_tokenizer(["corpus/train"], vocab_size=16384, pre="gpt-2")
    tok.save("tok/")
    tokenizer_fertility(tok, [open("corpus/heldout/x.txt").read()])
    # {'tokens_per_syllable': 1.2, 'bytes_per_token': 4.1, ...}

The pre-tokenizer is exactly one that llama.cpp knows by name (see
``llm_tokenizer_bpe`` in llama.cpp's ``src/llama-vocab.cpp``) so that a GGUF
export tokenizes byte-for-byte like Hugging Face ``tokenizers``:

- ``gpt-2``: ``ByteLevel(add_prefix_space=False, use_regex=True)``, whose
  built-in regex is GPT-2's (``'s|'t|... ?\\p{L}+| ?\\p{N}+|...``); number runs
  stay whole;
- ``qwen2``: ``Split`` on llama.cpp's qwen2 regex (copied verbatim below,
  including its ``'[sS]`` rewrite of ``(?i:'s)``) then ``ByteLevel(use_regex=False)``;
  digits are split one by one.

No normalizer goes into ``tokenizer.json`` (llama.cpp would not run it);
:class:`vnmini.text.tokenizer.VnTokenizer` normalizes in Python instead, and the
training text is normalized the same way. ``decoders.ByteLevel`` restores the
exact bytes, so ``decode(encode(s)) == s`` for every normalized ``s``.
Long documents reach the trainer in pieces cut by
:func:`vnmini.data.corpus.split_text` (bounded memory); the cuts are
pre-tokenizer boundaries, so the word counts and merges are those of the
uncut text.

Vocabulary seeding: the default corpus is statutes only, so a BPE trained on it
alone learns legal syllables and splits everyday words (``tệp``, ``màn``,
``Bạn`` at a sentence start). Vietnamese syllables are a closed set, so after
the corpus the trainer also sees every rule-generated syllable
(:func:`vnmini.text.normalization.generate_syllables`), each repeated in proportion to a
factorized prior P(onset)·P(rhyme)·P(tone | stop-final) estimated on the
training text itself: real but unseen syllables made of common parts get
counts, impossible-looking ones get none. ``seed_weight`` is the seed total
as a fraction of the corpus's syllables (0 turns it off); a quarter as many
capitalized forms are added. Measured on the default corpus (16k, qwen2):
statute held-out 1.188 -> 1.180 tokens/syllable, everyday Vietnamese 1.39 ->
1.22; see ``benchmarks/results_tokenizer.md``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from vnmini.data.corpus import ALL_SUFFIXES, CorpusStats, read_documents, split_text
from vnmini.errors import VnminiError
from vnmini.text.normalization import (
    count_syllables,
    generate_syllables,
    normalize,
    parse_syllable,
    syllables,
)
from vnmini.text.pretokenizers import build_pre_tokenizer
from vnmini.text.specials import SPECIAL_TOKENS
from vnmini.text.tokenizer import CHAT_TEMPLATE, UNICODE_TO_BYTE, VnTokenizer

# What `tokenizer train --pre` offers: not llama-bpe, whose llama.cpp tokenizer ignores merges (see DESIGN).
PRE_TOKENIZERS = ("gpt-2", "qwen2")
DEFAULT_VOCAB_SIZE = 16384
DEFAULT_PRE = "qwen2"  # measured better than gpt-2 off-domain (punctuation + newline merge); see module doc
DEFAULT_SEED_WEIGHT = 0.5
_STOPS = ("p", "t", "c", "ch")

def new_bpe(pre: str = "gpt-2") -> Tokenizer:
    """An empty byte-level BPE with vnmini's pre-tokenizer and decoder (no normalizer, no post-processor)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = build_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    return tok


class SyllablePrior:
    """Counts of onsets, rhymes and tones seen in training text; scores rule-generated syllables."""

    def __init__(self) -> None:
        self.onsets: Counter[str] = Counter()
        self.rhymes: Counter[str] = Counter()
        self.tones: Counter[tuple[str, bool]] = Counter()
        self.total = 0
        self._parsed: dict[str, tuple[str, str, str] | None] = {}

    def add(self, text: str) -> None:
        for word in syllables(text):
            p = self._parsed.get(word, ...)
            if p is ...:
                p = self._parsed[word] = parse_syllable(word) if len(self._parsed) < 1_000_000 else None
            if p is not None:
                onset, rhyme, tone = p
                self.onsets[onset] += 1
                self.rhymes[rhyme] += 1
                self.tones[(tone, rhyme.endswith(_STOPS))] += 1
                self.total += 1

    def probability(self, syllable: str) -> float:
        p = parse_syllable(syllable)
        if p is None or self.total == 0:
            return 0.0
        onset, rhyme, tone = p
        stop = rhyme.endswith(_STOPS)
        same_class = sum(v for (_, s), v in self.tones.items() if s == stop) or 1
        p_onset, p_rhyme = self.onsets[onset] / self.total, self.rhymes[rhyme] / self.total
        return p_onset * p_rhyme * (self.tones[(tone, stop)] / same_class)


def seed_texts(prior: SyllablePrior, weight: float, style: str = "new") -> Iterator[str]:
    """Rule-generated syllables as training text, " syl" repeated ~``weight·total·P(syl)`` times (see module doc)."""
    if weight <= 0 or prior.total == 0:
        return
    scale = weight * prior.total
    for syl in generate_syllables(style):
        count = round(scale * prior.probability(syl))
        if count:
            yield (" " + syl) * count + (" " + syl.capitalize()) * max(1, count // 4)


def _is_path_like(item: str | Path) -> bool:
    if isinstance(item, Path):
        return True
    if "\n" in item or len(item) > 4096:
        return False
    # Existing files, globs, and strings that look like paths (so a typo gives "no such file", not a 1-line corpus).
    looks_like_path = not any(c.isspace() for c in item) and (
        "/" in item or os.sep in item or item.endswith(ALL_SUFFIXES)
    )
    return os.path.exists(item) or any(c in item for c in "*?[") or looks_like_path


def train_tokenizer(
    paths_or_texts: Iterable[str | Path] | str | Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    pre: str = DEFAULT_PRE,
    *,
    field: str | None = None,
    column: str | None = None,
    doc_sep: str = "file",
    tone_style: str = "new",
    seed_weight: float = DEFAULT_SEED_WEIGHT,
    min_frequency: int = 2,
    chat_template: str = CHAT_TEMPLATE,
    is_text: bool | None = None,
    show_progress: bool = False,
    stats: CorpusStats | None = None,
) -> VnTokenizer:
    """Train a byte-level BPE on normalized text; returns a :class:`VnTokenizer` (call ``.save(folder)``).

    ``paths_or_texts`` are files/folders/globs (read with
    :func:`vnmini.data.corpus.read_documents`) or, with ``is_text=True`` (or when an
    item is not an existing path), the training texts themselves. The five
    special tokens take ids 0-4 (``<s>``, ``</s>``, ``<pad>``, ``<|im_start|>``,
    ``<|im_end|>``); the 256 byte tokens follow, so no input is ever unknown.
    """
    if pre not in PRE_TOKENIZERS:
        raise VnminiError(f"--pre {pre!r}: choose one of {', '.join(PRE_TOKENIZERS)} (llama.cpp knows both by name).")
    minimum = len(SPECIAL_TOKENS) + 256 + 1
    if vocab_size < minimum:
        raise VnminiError(f"--vocab-size {vocab_size}: must be at least {minimum} (specials + 256 bytes + 1 merge).")
    items = [paths_or_texts] if isinstance(paths_or_texts, (str, Path)) else list(paths_or_texts)
    if not items:
        raise VnminiError("no training text given; pass corpus files, folders or texts.")
    if is_text is None:
        is_text = not all(_is_path_like(i) for i in items)

    prior = SyllablePrior()

    def stream() -> Iterator[str]:
        if is_text:
            docs: Iterable[str] = ("".join(normalize(p, tone_style) for p in split_text(str(t))) for t in items)
        else:
            docs = read_documents(items, field, column, doc_sep=doc_sep, tone_style=tone_style, stats=stats)
        # Bounded pieces: the Rust trainer needs ~100 bytes per byte of one string, and split_text's
        # cuts are pre-tokenizer boundaries, so the word counts (and the merges) do not change.
        for doc in docs:
            for piece in split_text(doc) if doc else ():
                if seed_weight > 0:
                    prior.add(piece)
                yield piece
        # The prior is complete only once the corpus has streamed by: seeds come last.
        for seed in seed_texts(prior, seed_weight, tone_style):
            yield from split_text(seed)

    hf = new_bpe(pre)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(stream(), trainer=trainer)
    if hf.get_vocab_size() <= len(SPECIAL_TOKENS) + 256:
        raise VnminiError("the training text is too small to learn any merge; "
                          "give more text or a smaller --vocab-size.")
    return VnTokenizer(hf, chat_template=chat_template, pre_tokenizer_name=pre, tone_style=tone_style)


# -------------------------------------------------------------- evaluation
def load_any_tokenizer(path: str | Path) -> VnTokenizer | Tokenizer:
    """A vnmini tokenizer (folder or tokenizer.json with <s>/</s>), else any Hugging Face tokenizer.json."""
    p = Path(path)
    tok_file = p / "tokenizer.json" if p.is_dir() else p
    if not tok_file.is_file():
        raise VnminiError(f"{p}: no tokenizer.json there; give a tokenizer folder or a tokenizer.json file.")
    try:
        return VnTokenizer.load(p)
    except VnminiError:
        pass
    try:
        return Tokenizer.from_file(str(tok_file))
    except Exception as e:  # tokenizers raises a bare Exception for bad files
        raise VnminiError(f"{tok_file}: not a Hugging Face tokenizer.json ({str(e)[:80]}).") from e


def _is_byte_level(hf: Tokenizer) -> bool:
    data = json.loads(hf.to_str())
    return "ByteLevel" in json.dumps(data.get("decoder")) or "ByteLevel" in json.dumps(data.get("pre_tokenizer"))


def tokenizer_fertility(
    tokenizer: VnTokenizer | Tokenizer,
    texts: Iterable[str],
    tone_style: str = "new",
    chunk_chars: int = 20_000,
) -> dict:
    """Tokens per syllable, bytes per token and the share of byte-fallback tokens over ``texts``.

    Texts are normalized first (as vnmini does before any tokenizer), and the
    same normalized text is given to every tokenizer, so figures compare. A
    "byte-fallback" token is a ``<0xNN>`` token (SentencePiece) or a byte-level
    token that is not whole UTF-8 (a split inside a character); ``unknown_share``
    counts the tokenizer's unk token.
    """
    hf = tokenizer.hf if isinstance(tokenizer, VnTokenizer) else tokenizer
    byte_level = _is_byte_level(hf)
    unk = None
    model = json.loads(hf.to_str()).get("model", {})
    if model.get("unk_token"):
        unk = hf.token_to_id(model["unk_token"])
    n_tok = n_syl = n_bytes = n_fallback = n_unk = 0
    for text in texts:
        text = normalize(text, tone_style)
        n_syl += count_syllables(text)
        n_bytes += len(text.encode("utf-8"))
        # Encode in line-aligned chunks: tokenizers is quadratic-ish on huge single strings.
        chunks, cur, size = [], [], 0
        for line in text.splitlines(keepends=True):
            cur.append(line)
            size += len(line)
            if size >= chunk_chars:
                chunks.append("".join(cur))
                cur, size = [], 0
        if cur:
            chunks.append("".join(cur))
        for enc in hf.encode_batch(chunks, add_special_tokens=False):
            n_tok += len(enc.ids)
            for tok, idx in zip(enc.tokens, enc.ids, strict=True):
                if unk is not None and idx == unk:
                    n_unk += 1
                elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                    n_fallback += 1
                elif byte_level and all(c in UNICODE_TO_BYTE for c in tok):
                    try:
                        bytes(UNICODE_TO_BYTE[c] for c in tok).decode("utf-8")
                    except UnicodeDecodeError:
                        n_fallback += 1
    if n_tok == 0:
        raise VnminiError("no text to measure; give a non-empty text file.")
    return {
        "vocab_size": hf.get_vocab_size(with_added_tokens=True),
        "tokens": n_tok,
        "syllables": n_syl,
        "bytes": n_bytes,
        "tokens_per_syllable": n_tok / max(n_syl, 1),
        "bytes_per_token": n_bytes / n_tok,
        "byte_fallback_share": n_fallback / n_tok,
        "unknown_share": n_unk / n_tok,
    }


def fertility_table(rows: Sequence[tuple[str, str, dict]]) -> str:
    """Markdown table from ``(tokenizer name, text name, fertility dict)`` rows."""
    out = [
        "| tokenizer | vocab | text | syllables | tokens/syllable | bytes/token | byte-fallback | unknown |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, text, r in rows:
        out.append(
            f"| {name} | {r['vocab_size']:,} | {text} | {r['syllables']:,} | {r['tokens_per_syllable']:.3f} "
            f"| {r['bytes_per_token']:.2f} | {r['byte_fallback_share']:.2%} | {r['unknown_share']:.2%} |"
        )
    return "\n".join(out)
