"""Token shards: text -> ``.bin`` files of token ids + a JSON manifest, and the memmap reader.

This module owns ``vnmini data prepare`` and the on-disk token format that
training, distillation and eval read.

    from vnmini.data.shards import prepare_shards, ShardReader
    manifest = prepare_shards(["corpus/train"], tok, "shards/", val_fraction=0.01)
    train = ShardReader("shards/", "train", tokenizer_hash=tok.hash)
    x = train.read(0, 1025)          # np.int64 ids, crossing shard files as needed

Layout::

    shards/manifest.json             tokenizer hash, dtype, per-split counts, files
    shards/train_0000.bin ...        raw little-endian uint16 (uint32 when vocab >= 65,536)
    shards/val_0000.bin ...

Every document is written as ``BOS ids... EOS``; documents run on across shard
files (a reader concatenates them). A long document is tokenized in pieces cut
by :func:`vnmini.data.corpus.split_text` (same ids as one call, bounded
memory) and its ids concatenated, so it is still one document. The train/val
split is by document and deterministic: of every ``1/val_fraction`` documents one (spread evenly through
the stream) goes to val, so the same inputs always give the same split. The
whole folder is written atomically: an interrupted run leaves the old set (or
nothing), never a half one. A reader given a tokenizer hash refuses shards
made with another tokenizer, naming both. :func:`verify_shards` checks a set
against its manifest without reading the tokens (for ``vnmini info``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vnmini.atomic import atomic_dir, atomic_path, write_json
from vnmini.data.corpus import CorpusStats, read_documents, split_text
from vnmini.errors import VnminiError
from vnmini.outputs import check_output
from vnmini.progress import progress_bar
from vnmini.text.tokenizer import VnTokenizer

FORMAT = "vnmini-shards/1"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 16 * 1024 * 1024  # 32 MiB per uint16 file: few files, cheap to memmap
DEFAULT_VAL_FRACTION = 0.01
_BATCH_CHARS = 1_000_000  # text per parallel encode_batch; measured: 4M chars cost ~+150 MB RSS, no faster


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab < 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


class _SplitWriter:
    """Buffers token ids for one split and writes ``{split}_{NNNN}.bin`` files of ``shard_tokens`` ids."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.buf = np.empty(shard_tokens, dtype=dtype)
        self.fill = 0
        self.files: list[dict] = []
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: list[int], n_bytes: int) -> None:
        """One whole document's ids (BOS and EOS included)."""
        self.extend(ids, n_bytes)
        self.documents += 1

    def extend(self, ids: list[int], n_bytes: int) -> None:
        """Ids of a piece of the current document (its last piece goes through ``add``)."""
        arr = np.asarray(ids, dtype=self.dtype)
        self.tokens += len(arr)
        self.bytes += n_bytes
        while len(arr):
            take = min(len(arr), self.shard_tokens - self.fill)
            self.buf[self.fill : self.fill + take] = arr[:take]
            self.fill += take
            arr = arr[take:]
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.split}_{len(self.files):04d}.bin"
        with atomic_path(self.folder / name) as tmp:
            self.buf[: self.fill].tofile(tmp)
        self.files.append({"name": name, "tokens": int(self.fill)})
        self.fill = 0

    def summary(self) -> dict:
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes, "files": self.files}


def _pieces(docs: Iterable[str]) -> Iterator[tuple[str, bool, bool]]:
    """``(piece, first, last)`` for every piece of every document, in order (most documents are one piece)."""
    for doc in docs:
        pieces = split_text(doc)
        piece = next(pieces)
        first = True
        for following in pieces:
            yield piece, first, False
            piece, first = following, False
        yield piece, first, True


def _batches(pieces: Iterable[tuple[str, bool, bool]], max_chars: int) -> Iterator[list[tuple[str, bool, bool]]]:
    batch: list[tuple[str, bool, bool]] = []
    size = 0
    for item in pieces:
        batch.append(item)
        size += len(item[0])
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def prepare_shards(
    inputs: Iterable[str | Path] | str | Path,
    tokenizer: VnTokenizer,
    out_dir: str | Path,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    field: str | None = None,
    column: str | None = None,
    progress: bool = True,
    *,
    doc_sep: str = "file",
    stats: CorpusStats | None = None,
    force: bool = False,
) -> dict:
    """Tokenize ``inputs`` (files, folders, globs) into a shard set under ``out_dir``; returns the manifest.

    Text is read with :func:`vnmini.data.corpus.read_documents` (normalized with the
    tokenizer's tone style) and tokenized in parallel batches of bounded pieces. An
    existing shard set is replaced only with ``force``; anything else never.
    """
    check_output(out_dir, "shards", force)
    if not 0.0 <= val_fraction < 1.0:
        raise VnminiError(f"--val-fraction {val_fraction}: must be in [0, 1), e.g. 0.01.")
    if shard_tokens < 1024:
        raise VnminiError(f"--shard-tokens {shard_tokens}: use at least 1024 tokens per shard file.")
    stats = stats if stats is not None else CorpusStats()
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    out = Path(out_dir)
    docs = read_documents(inputs, field, column, doc_sep=doc_sep, tone_style=tokenizer.tone_style, stats=stats)

    with atomic_dir(out) as tmp:
        writers = {s: _SplitWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
        index = 0
        bar = progress_bar("tokenizing", None, enabled=progress)
        writer = writers["train"]
        try:
            for batch in _batches(_pieces(docs), _BATCH_CHARS):
                texts = [piece for piece, _, _ in batch]
                bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]  # BOS-less tokenizers: EOS separates
                for (piece, first, last), ids in zip(batch, tokenizer.encode_batch(texts), strict=True):
                    n_bytes = len(piece.encode("utf-8"))
                    if first:
                        # Document i goes to val when floor((i+1)f + 1/2) steps up: exactly
                        # round(N f) val documents, spread evenly, independent of batching.
                        is_val = math.floor((index + 1) * val_fraction + 0.5) > math.floor(index * val_fraction + 0.5)
                        writer = writers["val" if is_val else "train"]
                        ids = [*bos, *ids]
                    if last:
                        writer.add([*ids, tokenizer.eos_id], n_bytes)
                        index += 1
                    else:
                        writer.extend(ids, n_bytes)
                t = writers["train"].tokens + writers["val"].tokens
                bar.update(description=f"tokenizing: {index:,} documents, {t:,} tokens")
        finally:
            bar.close()
        for w in writers.values():
            w.flush()
        if writers["train"].documents == 0:
            raise VnminiError(f"{out}: no training documents left after the split; lower --val-fraction.")
        if val_fraction > 0 and writers["val"].documents == 0:
            raise VnminiError(
                f"{out}: only {index} document(s), too few to hold out {val_fraction:.0%} for validation; "
                "pass --val-fraction 0, add text, or split files into documents with --doc-sep blank/line."
            )
        manifest = {
            "format": FORMAT,
            "tokenizer_hash": tokenizer.hash,
            "tokenizer_source": tokenizer.source,
            "pre_tokenizer": tokenizer.pre_tokenizer_name,
            "tone_style": tokenizer.tone_style,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "val_fraction": val_fraction,
            "shard_tokens": shard_tokens,
            "inputs": [str(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)],
            "skipped_files": {k: len(v) for k, v in stats.skipped.items()},
            "splits": {s: w.summary() for s, w in writers.items()},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


# ------------------------------------------------------------------ reading
def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise VnminiError(f"{folder}: no manifest.json, not a shard set; create one with `vnmini data prepare`.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VnminiError(f"{path}: invalid JSON ({e.msg}); re-create the shards with `vnmini data prepare`.") from e
    if manifest.get("format") != FORMAT:
        raise VnminiError(f"{path}: format {manifest.get('format')!r} is not {FORMAT}; "
                          "re-create with `vnmini data prepare`.")
    return manifest


def check_tokenizer(manifest: dict, tokenizer_hash: str, where: str = "shards", name: str | None = None) -> None:
    """Refuse a shard set made with another tokenizer, naming both."""
    made = manifest.get("tokenizer_hash")
    if made != tokenizer_hash:
        theirs = f"{made} ({manifest.get('tokenizer_source', '?')})"
        ours = f"{tokenizer_hash}" + (f" ({name})" if name else "")
        raise VnminiError(
            f"{where}: made with tokenizer {theirs}, but this run uses tokenizer {ours}; "
            "re-run `vnmini data prepare` with this tokenizer."
        )


def _check_file(path: Path, tokens: int, dtype: np.dtype) -> None:
    """Refuse a shard file whose size is not ``tokens`` ids (truncated or overwritten)."""
    expected = tokens * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        got = f"{path.stat().st_size} bytes" if path.is_file() else "no file"
        raise VnminiError(f"{path}: expected {expected} bytes ({tokens} tokens), found {got}; "
                          "re-create the shards with `vnmini data prepare`.")  # fmt: skip


def verify_shards(folder: str | Path) -> dict:
    """Check a shard set against its manifest without reading tokens; returns the per-split facts.

    Every listed file must exist and hold exactly its token count × dtype size, and the
    files' counts must add up to the split's. Raises :class:`VnminiError` naming the file.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    where = folder / "manifest.json"
    try:
        dtype = np.dtype(manifest["dtype"])
        splits = manifest["splits"]
        out = {}
        for split, info in splits.items():
            total = 0
            for f in info["files"]:
                _check_file(folder / f["name"], int(f["tokens"]), dtype)
                total += int(f["tokens"])
            if total != int(info["tokens"]):
                raise VnminiError(f"{where}: split {split!r} lists {info['tokens']} tokens but its files hold {total}; "
                                  "re-create the shards with `vnmini data prepare`.")  # fmt: skip
            out[split] = {"tokens": total, "documents": int(info["documents"]), "files": len(info["files"])}
    except (KeyError, TypeError, ValueError) as e:
        raise VnminiError(f"{where}: incomplete manifest ({type(e).__name__}: {e}); "
                          "re-create the shards with `vnmini data prepare`.") from e  # fmt: skip
    return out


class ShardReader:
    """Random access to one split of a shard set as one long token stream (np.memmap, no copy on open)."""

    def __init__(self, folder: str | Path, split: str = "train", tokenizer_hash: str | None = None) -> None:
        self.folder = Path(folder)
        self.split = split
        self.manifest = load_manifest(self.folder)
        if tokenizer_hash is not None:
            check_tokenizer(self.manifest, tokenizer_hash, where=str(self.folder))
        splits = self.manifest.get("splits", {})
        if split not in splits:
            raise VnminiError(f"{self.folder}: no split {split!r} (has {', '.join(splits)}); use one of them.")
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self.dtype = np.dtype(self.manifest["dtype"])
        bos = self.manifest.get("bos_id")
        self.bos_id: int | None = None if bos is None else int(bos)
        self.eos_id: int = int(self.manifest["eos_id"])
        self._maps: list[np.memmap] = []
        sizes = []
        for f in splits[split]["files"]:
            path = self.folder / f["name"]
            _check_file(path, int(f["tokens"]), self.dtype)
            self._maps.append(np.memmap(path, dtype=self.dtype, mode="r"))
            sizes.append(int(f["tokens"]))
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.documents: int = int(splits[split]["documents"])
        self.bytes: int = int(splits[split]["bytes"])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """``n`` token ids from position ``start`` (int64), crossing shard files; short at the very end."""
        if start < 0 or n < 0:
            raise ValueError(f"read({start}, {n}): start and n must be >= 0")
        end = min(start + n, len(self))
        out = np.empty(max(end - start, 0), dtype=np.int64)
        pos = start
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        while pos < end:
            lo = pos - int(self._starts[i])
            take = min(end - pos, len(self._maps[i]) - lo)
            out[pos - start : pos - start + take] = self._maps[i][lo : lo + take]
            pos += take
            i += 1
        return out

    def iter_documents(self) -> Iterator[np.ndarray]:
        """Yield each document's ids (without BOS/EOS), in order; for checks and small-scale eval."""
        doc: list[np.ndarray] = []
        step = 1 << 20
        for s in range(0, len(self), step):
            chunk = self.read(s, step)
            cuts = np.flatnonzero(chunk == self.eos_id)
            prev = 0
            for c in cuts:
                doc.append(chunk[prev:c])
                ids = np.concatenate(doc)
                yield ids[1:] if len(ids) and ids[0] == self.bos_id else ids
                doc, prev = [], c + 1
            doc.append(chunk[prev:])
