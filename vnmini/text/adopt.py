"""A student vocabulary adopted from a teacher's (``vnmini tokenizer adopt``).

Logit distillation compares distributions id by id, so a student can learn from a
teacher's logits only if every student token is a teacher token. Teachers people have
(Qwen2.5, Llama-3.2, Gemma-3, a GGUF they run) carry 128k–262k tokens, far too many
for a student that should run on a 2-core laptop. :func:`adopt_tokenizer` keeps the
subset of the teacher's tokens that the user's (normalized) corpus uses most, plus
what the tokenizer needs to still encode any string:

* the special tokens with a role (BOS/EOS/pad/unk/end of turn) and the added tokens the
  chat template or post-processor writes;
* the byte alphabet (byte-level BPE: the 256 byte characters; SentencePiece-style
  BPE: the 256 ``<0xNN>`` byte-fallback tokens);
* for every kept token, the pieces its merges pass through (and, SentencePiece-style,
  its characters), so the student can still build it.

Ids stay in the teacher's order, and the student→teacher map is saved beside the
tokenizer as ``teacher_map.json``. The student's merges are the teacher's merges
among kept tokens, in the teacher's order, so on text whose teacher tokens are all
kept the student tokenizes exactly as the teacher does (the tests check it with the
teacher's own tokenizer as the oracle: ``tokenizers`` for HF folders, llama.cpp for
GGUFs); other text falls back to shorter kept pieces, never to ``<unk>``.

    from vnmini.text.adopt import adopt_tokenizer
    result = adopt_tokenizer("gemma-3-270m.gguf", ["corpus/train"], vocab_size=16384, out="tok-vi16k/")
    result.tokenizer.teacher_map.student_to_teacher[:5]      # teacher id of each student id

Teachers: an HF folder (``tokenizer.json``: byte-level BPE as Qwen2/Llama-3, or
``▁``/byte-fallback BPE as Gemma/Llama-2/Mistral) or a GGUF (``gpt2`` or ``llama``
tokenizer model). A Unigram or WordPiece model is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vnmini.errors import VnminiError
from vnmini.text.specials import Specials

MAP_FILE = "teacher_map.json"
MAP_FORMAT = "vnmini-teacher-map/1"
# Fill candidates (after the corpus's own tokens run out): Latin/Vietnamese letters, digits, punctuation, spaces.
_FILL_OK = re.compile(r"^[\s\u2581\u0120\w.,;:!?()\[\]\"'/%&+\-–—…«»“”‘’]+$")
_NFD_MARKS = re.compile(r"[\u0300-\u036f]")
_VI_LETTER = re.compile("[àáảãạăằắẳẵặâầấẩẫậđèéẻẽẹêềếểễệìíỉĩịòóỏõọôồốổỗộơờớởỡợùúủũụưừứửữựỳýỷỹỵ]", re.IGNORECASE)


# --------------------------------------------------------------- the map file
@dataclass(frozen=True)
class TeacherMap:
    """Student id ``s`` is teacher id ``student_to_teacher[s]`` (strictly increasing)."""

    student_to_teacher: tuple[int, ...]
    teacher_vocab_size: int
    teacher_source: str
    teacher_vocab_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"format": MAP_FORMAT, "teacher": self.teacher_source, "teacher_vocab_size": self.teacher_vocab_size,
                "teacher_vocab_hash": self.teacher_vocab_hash, "student_to_teacher": list(self.student_to_teacher)}

    @classmethod
    def read(cls, folder: Path) -> TeacherMap | None:
        path = folder / MAP_FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            ids = tuple(int(i) for i in d["student_to_teacher"])
            out = cls(ids, int(d["teacher_vocab_size"]), str(d["teacher"]), str(d["teacher_vocab_hash"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise VnminiError(f"{path}: not a valid teacher map ({e}); re-create it with `vnmini tokenizer adopt`.") \
                from e
        if d.get("format") != MAP_FORMAT or any(b <= a for a, b in zip(ids, ids[1:], strict=False)) \
                or (ids and (ids[0] < 0 or ids[-1] >= out.teacher_vocab_size)):
            raise VnminiError(f"{path}: inconsistent teacher map; re-create it with `vnmini tokenizer adopt`.")
        return out


def vocab_hash(tokens: Sequence[str]) -> str:
    """Hash of a vocabulary's token strings in id order (what a teacher map is checked against)."""
    h = hashlib.sha256()
    for t in tokens:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


# ------------------------------------------------------------- the teacher side
@dataclass
class TeacherVocab:
    """What adoption needs from a teacher tokenizer, whatever file it came from."""

    source: str
    style: str  # "byte-level" | "sentencepiece"
    tokens: list[str]  # id order
    priority: Callable[[str, str], float | None]  # merge priority of an adjacent pair (higher first), None = no merge
    required: set[int]  # ids kept whatever the corpus says
    encode: Callable[[str], list[int]]  # the teacher's own tokenization of normalized text
    build: Callable[[list[int]], Any]  # kept teacher ids (sorted) -> a student VnTokenizer

    @property
    def size(self) -> int:
        return len(self.tokens)


def _bpe_path(token: str, priority: Callable[[str, str], float | None]) -> list[str]:
    """The pieces (initial symbols and every merge result) a BPE goes through to build ``token`` alone."""
    syms = list(token)
    seen = list(syms)
    while len(syms) > 1:
        best, at = None, -1
        for i in range(len(syms) - 1):
            p = priority(syms[i], syms[i + 1])
            if p is not None and (best is None or p > best):
                best, at = p, i
        if best is None:
            break
        syms[at : at + 2] = [syms[at] + syms[at + 1]]
        seen.append(syms[at])
    return seen


def _hf_teacher(source: str, tok: Any) -> TeacherVocab:
    """An HF ``tokenizers`` BPE (byte-level or ▁/byte-fallback), as a VnTokenizer."""
    from tokenizers import Tokenizer

    from vnmini.text.tokenizer import BYTE_TO_UNICODE, VnTokenizer

    spec = json.loads(tok.hf.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise VnminiError(f"--from {source}: a {model.get('type')} tokenizer; `tokenizer adopt` takes BPE teachers "
                          "(byte-level or SentencePiece-style with byte fallback).")
    vocab_by_id = {i: t for t, i in tok.hf.get_vocab(with_added_tokens=True).items()}
    n = tok.vocab_size
    if sorted(vocab_by_id) != list(range(n)):
        raise VnminiError(f"--from {source}: token ids are not 0..{n - 1}; the tokenizer.json is inconsistent.")
    tokens = [vocab_by_id[i] for i in range(n)]
    raw = model.get("merges", [])
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]
    rank = {p: i for i, p in reversed(list(enumerate(pairs)))}
    ids = {t: i for i, t in enumerate(tokens)}
    required = set(tok.special_ids) | set(tok.specials.extra_stop_ids)
    required |= {i for i, a in tok.hf.get_added_tokens_decoder().items() if a.content in (tok.chat_template or "")}
    required |= {ids[t] for t in _post_processor_tokens(spec.get("post_processor")) if t in ids}
    if tok.style == "sentencepiece":
        required |= {ids[t] for t in (f"<0x{b:02X}>" for b in range(256)) if t in ids}
        if model.get("unk_token") in ids:
            required.add(ids[model["unk_token"]])
    else:
        required |= {ids[c] for c in BYTE_TO_UNICODE.values() if c in ids}

    def priority(a: str, b: str) -> float | None:
        r = rank.get((a, b))
        return None if r is None else -float(r)

    def build(kept: list[int]) -> VnTokenizer:
        new = {tokens[t]: s for s, t in enumerate(kept)}
        out = dict(spec)
        out_model = dict(model)
        out_model["vocab"] = {t: new[t] for t in model.get("vocab", {}) if t in new}
        keep_pair = [m for m, p in zip(raw, pairs, strict=True)
                     if p[0] in new and p[1] in new and p[0] + p[1] in new]
        out_model["merges"] = keep_pair
        out["model"] = out_model
        out["added_tokens"] = [{**a, "id": new[a["content"]]} for a in spec.get("added_tokens", [])
                               if a["content"] in new]
        out["post_processor"] = _remap_post_processor(spec.get("post_processor"), new)
        hf = Tokenizer.from_str(json.dumps(out, ensure_ascii=False))
        # generation_config's extra stop ids are teacher ids: carry them as end-of-turn token strings instead.
        extra = tuple(tokens[i] for i in tok.specials.extra_stop_ids if tokens[i] not in tok.specials.eot)
        specials = replace(tok.specials, eot=(*tok.specials.eot, *extra), extra_stop_ids=())
        return VnTokenizer(hf, chat_template=tok.chat_template, pre_tokenizer_name=tok.pre_tokenizer_name,
                           tone_style=tok.tone_style, source=source, specials=specials)

    return TeacherVocab(source, tok.style, tokens, priority, required, lambda text: tok.encode(text), build)


def _post_processor_tokens(pp: Any) -> list[str]:
    if not isinstance(pp, dict):
        return []
    if pp.get("type") == "Sequence":
        return [t for p in pp.get("processors", []) for t in _post_processor_tokens(p)]
    if pp.get("type") == "TemplateProcessing":
        return list(pp.get("special_tokens", {}))
    return []


def _remap_post_processor(pp: Any, new: dict[str, int]) -> Any:
    if not isinstance(pp, dict):
        return pp
    if pp.get("type") == "Sequence":
        return {**pp, "processors": [_remap_post_processor(p, new) for p in pp.get("processors", [])]}
    if pp.get("type") == "TemplateProcessing":
        st = {k: {**v, "ids": [new[t] for t in v.get("tokens", [k])]} for k, v in pp.get("special_tokens", {}).items()}
        return {**pp, "special_tokens": st}
    if pp.get("type") in ("ByteLevel", None):
        return pp
    raise VnminiError(f"post-processor {pp.get('type')!r} carries token ids vnmini can't remap; adopt from a "
                      "tokenizer with a TemplateProcessing or ByteLevel post-processor.")


def _gguf_spm_teacher(path: Path, reader: Any) -> TeacherVocab:
    """A GGUF with llama.cpp's SentencePiece (``llama``) tokenizer, tokenized by llama.cpp itself."""
    import gguf
    from llama_cpp import Llama
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    from vnmini.text.gguf_vocab import field_value
    from vnmini.text.llamacpp_tokenizer import LlamaCppTokenizer
    from vnmini.text.tokenizer import VnTokenizer

    tokens: list[str] = field_value(reader, "tokenizer.ggml.tokens")
    scores: list[float] = field_value(reader, "tokenizer.ggml.scores")
    types: list[int] = field_value(reader, "tokenizer.ggml.token_type")
    if not tokens or len(tokens) != len(types) or len(scores) != len(tokens):
        raise VnminiError(f"--from {path}: tokenizer.ggml.tokens/scores/token_type missing or inconsistent.")
    llm = Llama(str(path), vocab_only=True, verbose=False)
    lt = LlamaCppTokenizer(llm, chat_template=field_value(reader, "tokenizer.chat_template") or "",
                           source=str(path))
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)
    normal = gguf.TokenType.NORMAL
    space_prefix = bool(field_value(reader, "tokenizer.ggml.add_space_prefix", True))

    # llama.cpp's SPM merges the adjacent pair whose joined text is the highest-scoring token.
    def priority(a: str, b: str) -> float | None:
        i = ids.get(a + b)
        return None if i is None or types[i] != normal else float(scores[i])

    template = lt.chat_template
    required = set(lt.special_ids) & {i for i in (lt.bos_id, lt.eos_id, lt.pad_id, *lt.eot_ids) if i is not None}
    required |= {i for i, ty in enumerate(types) if ty == gguf.TokenType.CONTROL and tokens[i] in template}
    required |= {i for i, ty in enumerate(types) if ty in (gguf.TokenType.BYTE, gguf.TokenType.UNKNOWN)}
    specials = Specials(bos=tokens[lt.bos_id] if lt.bos_id is not None else None, eos=tokens[lt.eos_id],
                        pad=tokens[lt.pad_id] if lt.pad_id is not None else None,
                        unk=next((tokens[i] for i, ty in enumerate(types) if ty == gguf.TokenType.UNKNOWN), None),
                        eot=tuple(tokens[i] for i in lt.eot_ids), add_bos=lt.add_bos)

    def build(kept: list[int]) -> VnTokenizer:
        vocab = {tokens[t]: s for s, t in enumerate(kept)}
        merges = []
        for s, t in enumerate(kept):  # every split of a kept normal token into two kept tokens, by its score
            text = tokens[t]
            if types[t] != normal or len(text) < 2:
                continue
            for j in range(1, len(text)):
                a, b = text[:j], text[j:]
                if a in vocab and b in vocab:
                    merges.append((-scores[t], s, j, a, b))
        merges.sort()
        hf = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=specials.unk,
                                  byte_fallback=True, fuse_unk=True))
        norm = [normalizers.Prepend("\u2581")] if space_prefix else []
        hf.normalizer = normalizers.Sequence([*norm, normalizers.Replace(" ", "\u2581")])
        dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        hf.decoder = decoders.Sequence([*dec, decoders.Strip(" ", 1, 0)] if space_prefix else dec)
        ctrl = [AddedToken(tokens[t], special=True, normalized=False) for t in kept
                if types[t] == gguf.TokenType.CONTROL]
        user = [AddedToken(tokens[t], special=False, normalized=False) for t in kept
                if types[t] == gguf.TokenType.USER_DEFINED]
        if ctrl:
            hf.add_special_tokens(ctrl)
        if user:
            hf.add_tokens(user)
        return VnTokenizer(hf, chat_template=template, pre_tokenizer_name=None, source=str(path), specials=specials)

    return TeacherVocab(str(path), "sentencepiece", tokens, priority, required, lambda text: lt.encode(text), build)


def teacher_vocab(source: str | Path) -> TeacherVocab:
    """Open a teacher's tokenizer for adoption: an HF folder / tokenizer.json, or a GGUF."""
    path = Path(source)
    if not path.exists():
        raise VnminiError(f"--from {path}: no such file or folder; give the teacher's HF folder or its .gguf.")
    if path.is_file() and path.suffix == ".gguf":
        import gguf

        from vnmini.text.gguf_vocab import field_value, tokenizer_from_gguf

        try:
            reader = gguf.GGUFReader(str(path))
        except (ValueError, OSError) as e:
            raise VnminiError(f"--from {path}: not a readable GGUF ({e}).") from e
        model = field_value(reader, "tokenizer.ggml.model")
        if model == "llama":
            return _gguf_spm_teacher(path, reader)
        if model == "gpt2":
            return _hf_teacher(str(path), tokenizer_from_gguf(reader, str(path)))
        raise VnminiError(f"--from {path}: tokenizer model {model!r}; adopt takes gpt2 (byte-level BPE) or llama "
                          "(SentencePiece-style BPE) GGUFs.")
    from vnmini.text.tokenizer import VnTokenizer

    return _hf_teacher(str(path), VnTokenizer.load(path))


# ------------------------------------------------------------------- adoption
@dataclass
class Adopted:
    tokenizer: Any  # VnTokenizer, with .teacher_map set
    counts_used: int  # distinct teacher tokens the corpus used
    kept_from_corpus: int  # of them, kept in the student
    coverage: float  # share of the corpus's teacher tokens that are kept
    teacher_tokens: int  # teacher tokens over the corpus


def count_teacher_tokens(tv: TeacherVocab, texts: Iterable[str], progress: Callable[[int], None] | None = None,
                         chunk_chars: int = 20_000) -> np.ndarray:
    """How often each teacher id occurs when the teacher tokenizes ``texts`` (normalized already)."""
    counts = np.zeros(tv.size, dtype=np.int64)
    for text in texts:
        cur: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            cur.append(line)
            size += len(line)
            if size >= chunk_chars:
                counts += np.bincount(tv.encode("".join(cur)), minlength=tv.size)
                cur, size = [], 0
        if cur:
            counts += np.bincount(tv.encode("".join(cur)), minlength=tv.size)
        if progress:
            progress(len(text.encode("utf-8")))
    return counts


def select_tokens(tv: TeacherVocab, counts: np.ndarray, vocab_size: int) -> list[int]:
    """Required ids, then the corpus's tokens by frequency (each with its merge path), then teacher-order fill."""
    ids = {t: i for i, t in reversed(list(enumerate(tv.tokens)))}
    kept: set[int] = set(tv.required)
    if len(kept) > vocab_size:
        raise VnminiError(f"--vocab-size {vocab_size}: the teacher needs {len(kept)} tokens just to encode any string "
                          "(specials and byte tokens); raise --vocab-size.")

    def closure(i: int) -> set[int] | None:
        pieces = _bpe_path(tv.tokens[i], tv.priority)
        if any(p not in ids for p in pieces):  # a piece outside the vocabulary: the token can't be built
            return None
        return ({ids[p] for p in pieces} | {i}) - kept

    order = np.argsort(-counts, kind="stable")
    for i in order:
        if counts[i] == 0 or len(kept) >= vocab_size:
            break
        i = int(i)
        if i in kept:
            continue
        need = closure(i)
        if need is not None and len(kept) + len(need) <= vocab_size:
            kept |= need
    if len(kept) < vocab_size:
        # The corpus used fewer tokens: fill with the teacher's text tokens, Vietnamese-looking ones first
        # (held-out text meets syllables the corpus never used), each group in teacher id order.
        vi = [i for i, t in enumerate(tv.tokens) if _VI_LETTER.search(t)]
        for i in [*vi, *range(tv.size)]:
            t = tv.tokens[i]
            if len(kept) >= vocab_size:
                break
            if i in kept or not _FILL_OK.match(t) or _NFD_MARKS.search(t):
                continue
            need = closure(i)
            if need is not None and len(kept) + len(need) <= vocab_size:
                kept |= need
    return sorted(kept)


def adopt_tokenizer(teacher: str | Path, corpus: Sequence[str | Path], vocab_size: int = 16384,
                    out: str | Path | None = None, field: str | None = None, column: str | None = None,
                    progress: bool = True) -> Adopted:
    """Adopt ``vocab_size`` of ``teacher``'s tokens chosen on ``corpus``; save to ``out`` if given (module doc)."""
    from vnmini.data.corpus import read_documents
    from vnmini.progress import progress_bar

    if vocab_size < 300:
        raise VnminiError(f"--vocab-size {vocab_size}: too small; the byte alphabet alone is 256 tokens.")
    tv = teacher_vocab(teacher)
    if vocab_size >= tv.size:
        raise VnminiError(f"--vocab-size {vocab_size}: the teacher {tv.source} has only {tv.size} tokens; "
                          "use its tokenizer as it is.")
    files = [str(p) for p in corpus]
    total = sum(Path(p).stat().st_size for p in _expand(files))
    bar = progress_bar("count teacher tokens", total, enabled=progress, fields="chars")
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        bar.update(completed=min(done, total))

    try:
        counts = count_teacher_tokens(tv, read_documents(files, field, column), tick)
        bar.update(completed=total)  # bytes on disk and normalized bytes differ a little
    finally:
        bar.close()
    kept = select_tokens(tv, counts, vocab_size)
    tok = tv.build(kept)
    if tok.vocab_size != len(kept):
        raise VnminiError(f"--from {tv.source}: the adopted tokenizer has {tok.vocab_size} ids for {len(kept)} kept "
                          "tokens; the teacher's tokenizer.json is inconsistent.")
    tok.teacher_map = TeacherMap(tuple(kept), tv.size, tv.source, vocab_hash(tv.tokens))
    kept_set = set(kept)
    used = np.flatnonzero(counts)
    covered = int(sum(int(counts[i]) for i in used if int(i) in kept_set))
    result = Adopted(tok, int(len(used)), int(sum(1 for i in used if int(i) in kept_set)),
                     covered / max(int(counts.sum()), 1), int(counts.sum()))
    if out is not None:
        from vnmini.atomic import atomic_dir

        with atomic_dir(Path(out)) as tmp:
            tok.save(tmp)
        tok.source = str(Path(out) / "tokenizer.json")  # shards made with it record where it lives
    else:
        tok.source = f"<adopted from {tv.source}>"
    return result


def _expand(files: list[str]) -> list[Path]:
    from vnmini.data.corpus import expand_paths

    return expand_paths(files)


def teacher_fertility(teacher: str | Path | TeacherVocab, texts: Iterable[str]) -> dict[str, float]:
    """Tokens per syllable of the teacher's own tokenizer on (normalized) ``texts``, for the adopt report."""
    from vnmini.text.normalization import count_syllables, normalize

    tv = teacher if isinstance(teacher, TeacherVocab) else teacher_vocab(teacher)
    texts = [normalize(t) for t in texts]
    n_tok = int(count_teacher_tokens(tv, texts).sum())
    n_syl = sum(count_syllables(t) for t in texts)
    return {"tokens": n_tok, "syllables": n_syl, "tokens_per_syllable": n_tok / max(n_syl, 1)}


def check_teacher_tokens(student_tokens: Sequence[str | None], teacher_tokens: Sequence[str | None],
                         tmap: TeacherMap, teacher: str, student: str) -> None:
    """Refuse a map whose student tokens are not the teacher's tokens at the mapped ids."""
    if len(student_tokens) != len(tmap.student_to_teacher):
        raise VnminiError(f"{student}: {len(student_tokens)} tokens but its teacher map has "
                          f"{len(tmap.student_to_teacher)}; re-create it with `vnmini tokenizer adopt`.")
    if len(teacher_tokens) != tmap.teacher_vocab_size:
        raise VnminiError(f"--teacher {teacher}: {len(teacher_tokens)} tokens, but the student's vocabulary was "
                          f"adopted from a {tmap.teacher_vocab_size}-token teacher ({tmap.teacher_source}); use that "
                          "teacher or adopt again from this one with `vnmini tokenizer adopt`.")
    for s, t in enumerate(tmap.student_to_teacher):
        if student_tokens[s] != teacher_tokens[t]:
            raise VnminiError(f"--teacher {teacher}: its token {t} is {teacher_tokens[t]!r}, the student's token {s} "
                              f"is {student_tokens[s]!r}; the student ({student}) was adopted from another "
                              "vocabulary — adopt again with `vnmini tokenizer adopt --from TEACHER`.")


__all__ = ["adopt_tokenizer", "teacher_vocab", "TeacherMap", "TeacherVocab", "Adopted", "count_teacher_tokens",
           "select_tokens", "check_teacher_tokens", "teacher_fertility", "vocab_hash", "MAP_FILE"]
