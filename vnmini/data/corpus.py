"""Reading and cleaning text corpora, streamed.

This module owns turning user paths into a stream of normalized documents. It
never holds the whole corpus in memory: files are opened one at a time and
``.jsonl``/``.parquet`` files are read record by record.

    from vnmini.data.corpus import read_documents, clean_documents, CorpusStats
    stats = CorpusStats()
    docs = read_documents(["data/", "extra/*.jsonl"], field="text", stats=stats)
    for doc in clean_documents(docs, min_chars=50, min_vi_share=0.3, stats=stats):
        ...
    print(stats.summary())

Inputs: files, folders (searched recursively, sorted, so the order is
reproducible) and glob patterns. Formats by suffix:

- ``.txt``/``.md`` (optionally ``.gz``): one document per file by default;
  ``doc_sep="blank"`` splits at blank lines, ``"line"`` makes every line a
  document (both streamed, for big dumps);
- ``.jsonl`` (optionally ``.gz``): one document per line, taken from ``field``
  (default ``"text"``);
- ``.parquet``: one document per row of ``column`` (default ``"text"``); needs pyarrow.

Binary or non-UTF-8 files are skipped and counted in :class:`CorpusStats`
(never a crash); if nothing readable is left, or a file is corrupt (truncated
gzip, bad JSON, missing field), a one-line :class:`VnminiError` names the file
and the fix.

Long documents: a document is still yielded whole (dedupe, the train/val split
and BOS/EOS are per document), but it is never processed in one go: a
one-document-per-file text is decoded in 1 MiB chunks, and any text longer than
:data:`MAX_PIECE_CHARS` is normalized piece by piece, so reading holds about
twice the document plus one piece's temporaries (raw bytes, decoded and
normalized copies of the whole document never coexist). Consumers that tokenize
(``vnmini data prepare``, ``vnmini tokenizer train``) cut it again with
:func:`split_text`, because the Rust tokenizer needs over 100 bytes of memory
per byte of one input string. Cuts fall just before a space that follows a
letter or digit (else between a letter and a digit): no normalization step and
neither regex pre-tokenizer vnmini uses (GPT-2's, qwen2's) joins those two
characters, so the pieces normalize and tokenize exactly as the whole text
would. Only a window with no such place at all is cut hard (see :func:`_cut`).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import io
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vnmini.errors import VnminiError
from vnmini.text.normalization import count_syllables, is_nfc, normalize, tone_style_counts, vietnamese_share

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
ALL_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
DOC_SEPS = ("file", "blank", "line")
_SNIFF = 8192
MAX_PIECE_CHARS = 100_000  # longest text normalized or tokenized in one call; Rust memory grows faster than linearly
_READ_BYTES = 1 << 20


@dataclass
class CorpusStats:
    """What reading and cleaning did: counts of files, documents, and of what was skipped or dropped."""

    files: int = 0
    documents: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> file names
    dropped_duplicate: int = 0
    dropped_short: int = 0
    dropped_not_vietnamese: int = 0
    dropped_duplicate_lines: int = 0

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(str(path))

    @property
    def skipped_files(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.files} files read, {self.documents} documents"]
        for reason, files in self.skipped.items():
            parts.append(f"{len(files)} skipped as {reason} (e.g. {files[0]})")
        for name in ("duplicate", "short", "not_vietnamese", "duplicate_lines"):
            n = getattr(self, f"dropped_{name}")
            if n:
                unit = "lines" if name == "duplicate_lines" else "documents"
                parts.append(f"{n} {unit} dropped as {name.replace('_', ' ')}")
        return "; ".join(parts)


# ------------------------------------------------------------------ paths
def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "text"


def _supported(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(ALL_SUFFIXES)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named by ``paths`` (files, folders searched recursively, glob patterns), in a stable order."""
    out: list[Path] = []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in paths:
        s = str(p)
        path = Path(s).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and _supported(f) and not f.name.startswith("."))
            if not found:
                raise VnminiError(
                    f"{path}: folder has no {', '.join(ALL_SUFFIXES)} files (optionally .gz); "
                    "point at a folder with text files."
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        elif any(c in s for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file())
            if not found:
                raise VnminiError(f"{s}: the pattern matches no files; check the path or quote the pattern.")
            out.extend(found)
        else:
            raise VnminiError(f"{path}: no such file or folder; check the path.")
    if not out:
        raise VnminiError("no input paths given; pass text files, folders or glob patterns.")
    return out


# ---------------------------------------------------------------- readers
class _Skip(Exception):
    """Raised inside a reader to skip the current file with a reason."""


def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _corrupt(path: Path, e: Exception) -> VnminiError:
    return VnminiError(f"{path}: corrupt or truncated gzip ({e}); re-download or re-compress the file.")


def _sniff(f: io.BufferedIOBase, path: Path) -> bytes:
    try:
        head = f.peek(_SNIFF)[:_SNIFF] if hasattr(f, "peek") else b""
    except (EOFError, OSError, zlib.error) as e:
        raise _corrupt(path, e) from e
    if b"\x00" in head:
        raise _Skip("binary")
    return head


_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=[0-9])|(?<=[0-9])(?=[^\W\d_])")
_SPECIAL_OPEN = "<"  # special tokens look like <s>, </s>, <|im_start|>: a hard cut must not split one
_SPECIAL_MAX = 16


def _cut(text: str, start: int, max_chars: int) -> int:
    """Where the piece starting at ``start`` ends: the last safe cut in ``(start, start + max_chars]``.

    Safe = just before a U+0020 space preceded by a letter or digit (see the module doc), else
    between a letter and an ASCII digit (a boundary of both pre-tokenizers too). A window with
    neither (a megabyte of unspaced CJK or punctuation) is cut hard, away from whitespace,
    combining marks and special-token strings; only there may ids at the cut differ.
    """
    limit = start + max_chars
    j = text.rfind(" ", start + 1, limit + 1)
    while j > start:
        if text[j - 1].isalnum():
            return j
        j = text.rfind(" ", start + 1, j)
    last = None
    for m in _LETTER_DIGIT.finditer(text, start + 1, limit + 1):
        if m.start() > start and (text[m.start() - 1].isalpha() or text[m.start()].isalpha()):
            last = m.start()
    if last is not None:
        return last
    j = limit
    while j > start + 1:
        if _hard_cut_ok(text[j - 1]) and _hard_cut_ok(text[j]):
            lt = text.rfind(_SPECIAL_OPEN, max(start + 1, j - _SPECIAL_MAX), j)
            if lt < 0 or ">" in text[lt:j]:
                return j
            j = lt + 1  # next try cuts before the "<"
        j -= 1
    return j


def _hard_cut_ok(ch: str) -> bool:
    return not (ch.isspace() or ch == "\u200d" or unicodedata.combining(ch) or unicodedata.category(ch) == "Me")


def split_text(text: str, max_chars: int | None = None) -> Iterator[str]:
    """``text`` in pieces of at most ``max_chars`` (default :data:`MAX_PIECE_CHARS`); ``"".join`` gives it back.

    Encoding the pieces one by one and concatenating the ids gives the ids of the
    whole text, and normalizing them one by one gives the normalized whole text
    (cuts are at safe places, see :func:`_cut`).
    """
    max_chars = max_chars or MAX_PIECE_CHARS
    start = 0
    while len(text) - start > max_chars:
        end = _cut(text, start, max_chars)
        yield text[start:end]
        start = end
    if start < len(text) or not text:
        yield text[start:] if start else text


def _by_pieces(fn: Callable[[str], str], text: str) -> str:
    """``fn(text)``, applied piece by piece when the text is long (bounded temporaries in ``normalize``)."""
    if len(text) <= MAX_PIECE_CHARS:
        return fn(text)
    return "".join(fn(p) for p in split_text(text))


def _identity(text: str) -> str:
    return text


def _read_whole_file(f: io.BufferedIOBase, fn: Callable[[str], str]) -> str:
    """The file as one document: decoded in chunks, ``fn`` applied to each piece as soon as it is cut."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    done: list[str] = []
    raw = ""
    try:
        while True:
            chunk = f.read(_READ_BYTES)
            if b"\x00" in chunk:
                raise _Skip("binary")
            raw += decoder.decode(chunk, final=not chunk)
            while len(raw) > MAX_PIECE_CHARS:
                end = _cut(raw, 0, MAX_PIECE_CHARS)
                done.append(fn(raw[:end]))
                raw = raw[end:]
            if not chunk:
                break
    except UnicodeDecodeError as e:
        raise _Skip("not UTF-8") from e
    done.append(fn(raw))
    return done[0] if len(done) == 1 else "".join(done)


def _read_text_docs(path: Path, doc_sep: str, fn: Callable[[str], str] = _identity) -> Iterator[str]:
    try:
        with _open_bytes(path) as f:
            _sniff(f, path)
            if doc_sep == "file":
                yield _read_whole_file(f, fn)
                return
            text = io.TextIOWrapper(f, encoding="utf-8", errors="strict", newline="")
            buf: list[str] = []
            try:
                for line in text:
                    if "\x00" in line:
                        raise _Skip("binary")
                    blank = line.isspace()  # not line.strip(): that would copy a long line
                    if doc_sep == "line":
                        if not blank:
                            yield _by_pieces(fn, line)
                    elif not blank:
                        buf.append(line)
                    elif buf:
                        yield _by_pieces(fn, "".join(buf))
                        buf = []
            except UnicodeDecodeError as e:
                raise _Skip("not UTF-8") from e
            if buf:
                yield _by_pieces(fn, "".join(buf))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(path, e) from e


def _read_jsonl_docs(path: Path, field_name: str, fn: Callable[[str], str] = _identity) -> Iterator[str]:
    try:
        with _open_bytes(path) as f:
            _sniff(f, path)
            for lineno, raw in enumerate(f, 1):
                if raw.isspace():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _Skip("not UTF-8") from e
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise VnminiError(f"{path}:{lineno}: not valid JSON ({e.msg}); "
                                      "each line must be one JSON object.") from e
                if not isinstance(rec, dict):
                    raise VnminiError(f"{path}:{lineno}: a JSON {type(rec).__name__}, not an object; "
                                      f"each line must be {{\"{field_name}\": ...}}.")
                if field_name not in rec:
                    keys = ", ".join(list(rec)[:8]) or "none"
                    raise VnminiError(f"{path}:{lineno}: no field '{field_name}' (fields: {keys}); "
                                      "pass --field with one of them.")
                value = rec[field_name]
                if isinstance(value, str):
                    yield _by_pieces(fn, value)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(path, e) from e


def _read_parquet_docs(path: Path, column: str, fn: Callable[[str], str] = _identity) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise VnminiError(f"{path}: reading .parquet needs pyarrow; `pip install pyarrow` (or vnmini[parquet]).") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
        raise _Skip("not parquet") from e
    names = pf.schema_arrow.names
    if column not in names:
        raise VnminiError(f"{path}: no column '{column}' (columns: {', '.join(names[:8])}); "
                          "pass --column with one of them.")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield _by_pieces(fn, value)


def read_documents(
    paths: Iterable[str | Path] | str | Path,
    field: str | None = None,
    column: str | None = None,
    *,
    doc_sep: str = "file",
    normalized: bool = True,
    tone_style: str = "new",
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """Stream the documents in ``paths``, normalized unless ``normalized=False``.

    Normalized = :func:`vnmini.text.normalization.normalize`, run piece by piece on long
    text. Empty documents are dropped. Skipped files are recorded in ``stats``; if no
    document at all comes out, raises :class:`VnminiError` saying why.
    """
    if doc_sep not in DOC_SEPS:
        raise VnminiError(f"--doc-sep {doc_sep!r}: use one of {', '.join(DOC_SEPS)}.")
    # Resolve paths now, not on first iteration, so a bad path fails before any progress bar starts.
    files = expand_paths(paths)
    return _stream(files, field, column, doc_sep, normalized, tone_style, stats if stats is not None else CorpusStats())


def _stream(
    files: list[Path], field: str | None, column: str | None, doc_sep: str, normalized: bool, tone_style: str,
    stats: CorpusStats,
) -> Iterator[str]:
    produced = 0
    fn = (lambda text: normalize(text, tone_style)) if normalized else _identity
    if normalized:
        normalize("", tone_style)  # a bad tone style fails here, before any file is opened
    for path in files:
        kind = _kind(path)
        if kind == "jsonl":
            reader = _read_jsonl_docs(path, field or "text", fn)
        elif kind == "parquet":
            reader = _read_parquet_docs(path, column or "text", fn)
        else:
            reader = _read_text_docs(path, doc_sep, fn)
        stats.files += 1
        try:
            for doc in reader:
                if not doc or doc.isspace():  # not doc.strip(): that would copy a long document
                    continue
                produced += 1
                stats.documents += 1
                yield doc
        except _Skip as s:
            stats.skip(path, str(s))
    if produced == 0:
        why = f" ({stats.summary()})" if stats.skipped else ""
        raise VnminiError(f"{', '.join(map(str, files[:3]))}: no readable documents{why}; "
                          "give UTF-8 text, .jsonl or .parquet files.")


# ---------------------------------------------------------------- cleaning
def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).digest()


def clean_documents(
    docs: Iterable[str],
    *,
    min_chars: int = 0,
    min_vi_share: float = 0.0,
    dedupe: bool = True,
    dedupe_lines: bool = False,
    min_line_chars: int = 20,
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """Filter a document stream: exact dedupe, minimum length, minimum Vietnamese share.

    ``dedupe`` drops exact repeats of a whole document; ``dedupe_lines`` also
    drops lines of at least ``min_line_chars`` characters already seen in an
    earlier document (boilerplate headers, footers). Memory: 12 bytes per
    distinct document or line. ``min_vi_share`` is the fraction of syllables
    with Vietnamese diacritics (:func:`vnmini.text.normalization.vietnamese_share`).
    """
    stats = stats if stats is not None else CorpusStats()
    seen_docs: set[bytes] = set()
    seen_lines: set[bytes] = set()
    for doc in docs:
        if dedupe:
            h = _digest(doc)
            if h in seen_docs:
                stats.dropped_duplicate += 1
                continue
            seen_docs.add(h)
        if dedupe_lines:
            kept = []
            for line in doc.split("\n"):
                if len(line.strip()) >= min_line_chars:
                    h = _digest(line.strip())
                    if h in seen_lines:
                        stats.dropped_duplicate_lines += 1
                        continue
                    seen_lines.add(h)
                kept.append(line)
            doc = "\n".join(kept).strip("\n")
        if len(doc.strip()) < max(min_chars, 1):
            stats.dropped_short += 1
            continue
        if min_vi_share > 0 and vietnamese_share(doc) < min_vi_share:
            stats.dropped_not_vietnamese += 1
            continue
        yield doc


def corpus_stats(
    paths: Iterable[str | Path] | str | Path,
    field: str | None = None,
    column: str | None = None,
    doc_sep: str = "file",
) -> dict:
    """Describe raw (un-normalized) text: documents, bytes, syllables, NFC share, tone styles, Vietnamese share."""
    st = CorpusStats()
    out = {"documents": 0, "bytes": 0, "characters": 0, "syllables": 0, "nfc_documents": 0,
           "tone_new": 0, "tone_old": 0}  # fmt: skip
    vi_weighted = 0.0
    for doc in read_documents(paths, field, column, doc_sep=doc_sep, normalized=False, stats=st):
        out["documents"] += 1
        out["bytes"] += len(doc.encode("utf-8"))
        out["characters"] += len(doc)
        n = count_syllables(doc)
        out["syllables"] += n
        out["nfc_documents"] += is_nfc(doc)
        tones = tone_style_counts(doc)
        out["tone_new"] += tones["new"]
        out["tone_old"] += tones["old"]
        vi_weighted += vietnamese_share(doc) * n
    out["nfc_share"] = out["nfc_documents"] / max(out["documents"], 1)
    out["vietnamese_share"] = vi_weighted / max(out["syllables"], 1)
    out["files"] = st.files
    out["skipped"] = {k: len(v) for k, v in st.skipped.items()}
    return out


def clean_corpus(
    inputs: Iterable[str | Path] | str | Path,
    out_path: str | Path,
    *,
    field: str | None = None,
    column: str | None = None,
    doc_sep: str = "file",
    tone_style: str = "new",
    min_chars: int = 0,
    min_vi_share: float = 0.0,
    dedupe: bool = True,
    dedupe_lines: bool = False,
    force: bool = False,
) -> CorpusStats:
    """Normalize + clean ``inputs`` into one ``.jsonl`` file of ``{"text": ...}`` records (written atomically).

    An existing output file is replaced only with ``force``; a folder never.
    """
    from vnmini.atomic import atomic_path
    from vnmini.outputs import check_output

    out_path = Path(out_path)
    if not out_path.name.endswith(".jsonl"):
        raise VnminiError(f"{out_path}: the cleaned corpus is written as JSON lines; "
                          "give an output name ending in .jsonl.")
    check_output(out_path, "file", force)
    stats = CorpusStats()
    docs = read_documents(inputs, field, column, doc_sep=doc_sep, tone_style=tone_style, stats=stats)
    kept = 0
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in clean_documents(docs, min_chars=min_chars, min_vi_share=min_vi_share, dedupe=dedupe,
                                   dedupe_lines=dedupe_lines, stats=stats):  # fmt: skip
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            kept += 1
        if kept == 0:
            raise VnminiError(f"{out_path}: every document was filtered out ({stats.summary()}); "
                              "lower --min-chars or --min-vi-share.")
    return stats
