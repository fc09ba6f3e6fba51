"""Short KD and scratch runs on the Gemma benchmark's cache: how warmup and seed move the start.

The Gemma benchmark's KD student once scored 0.761 held-out with seed 1337 and 0.914 with
seed 1, while its scratch control moved 0.007. This script trains the same students
(``tiny``, adopted 16k vocabulary, 512-token rows, 2,048 tokens a step, WSD, lr 3e-3,
dropout 0.1) for a few steps under each setting and seed, from the teacher cache that
``benchmarks/distill_gemma.py`` left in ``--work`` (run that first), and scores each on
the first ``--chars`` characters of the held-out Civil Code::

    python benchmarks/distill_gemma.py                       # once: the adopted tokenizer, shards and cache
    python benchmarks/kd_warmup.py --steps 150 --seeds 1337 1 --warmups 20 100 --modes kd scratch
    python benchmarks/kd_warmup.py --report                  # the table of every run so far

Each run appends a row to ``--results`` (JSONL) and the table is printed from that file,
so runs made in several sittings land in one table. Numbers are one run each; a run is
deterministic given its settings (same seed, rows and dropout masks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(work: Path, mode: str, seed: int, warmup: int, steps: int, lr: float, alpha: float, dropout: float,
            chars: int, threads: int, out_root: Path) -> dict:
    from distill_gemma import student_settings  # the benchmark's own students (this script's folder is on sys.path)

    from vnmini.eval.bpb import eval_text
    from vnmini.runtime.loader import load
    from vnmini.training.distill import distill
    from vnmini.training.pretrain import train

    name = f"{mode}-s{seed}-n{steps}-lr{lr}-w{warmup}-a{alpha}-d{dropout}"
    out = out_root / name
    common = {**student_settings(work, preset="tiny", seq_len=512, batch_tokens=2048, steps=steps, warmup=warmup,
                                 lr=lr, dropout=dropout, seed=seed, threads=threads), "progress": False}
    t0 = time.perf_counter()
    if mode == "kd":
        s = distill(teacher_cache=str(work / "cache"), alpha=alpha, out=str(out), **common)
    else:
        s = train(out=str(out), **common)
    elapsed = time.perf_counter() - t0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").open(encoding="utf-8")]
    curve = [(r["step"], round(r["eval_bpb"], 4)) for r in evals if "eval_bpb" in r]
    held = next((work / "corpus" / "heldout").glob("*.txt")).read_text(encoding="utf-8")[:chars]
    sample = out / "heldout.txt"
    sample.write_text(held, encoding="utf-8")
    r = eval_text(load(s["final"], threads=threads), sample, context=512, progress=False)
    return {"mode": mode, "seed": seed, "warmup": warmup, "steps": steps, "lr": lr, "alpha": alpha,
            "dropout": dropout, "chars": chars, "val_curve": curve, "val_bpb": curve[-1][1],
            "heldout_bpb": round(r["bpb"], 4), "elapsed_s": round(elapsed, 1), "date": time.strftime("%Y-%m-%d")}


def table(rows: list[dict]) -> str:
    """One line per (mode, steps, warmup, lr, alpha, dropout): each seed's validation/held-out bpb and the spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["steps"], r["warmup"], r["lr"], r["alpha"], r["dropout"]), []).append(r)
    lines = ["| student | steps | warmup | lr | α | dropout | validation bpb by seed | held-out bpb by seed | "
             "held-out spread |", "|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for (mode, steps, warmup, lr, alpha, dropout), rs in sorted(groups.items(), key=lambda kv: kv[0]):
        rs = sorted(rs, key=lambda r: r["seed"])
        held = [r["heldout_bpb"] for r in rs]
        lines.append(f"| {mode} | {steps} | {warmup} | {lr} | {alpha if mode == 'kd' else ''} | {dropout} | "
                     + ", ".join(f"{r['seed']}: {r['val_bpb']:.3f}" for r in rs) + " | "
                     + ", ".join(f"{r['seed']}: {r['heldout_bpb']:.3f}" for r in rs) + " | "
                     + (f"{max(held) - min(held):.3f}" if len(held) > 1 else "") + " |")
    chars = sorted({r["chars"] for r in rows})
    med = statistics.median(r["elapsed_s"] for r in rows) if rows else 0
    return "\n".join(lines) + (f"\n\nHeld-out: the first {', '.join(f'{c:,}' for c in chars)} characters of the "
                               f"Civil Code, 512-token windows, stride half; median run {med:.0f} s.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench-distill-gemma"), help="distill_gemma.py's --work")
    ap.add_argument("--modes", nargs="+", default=["kd", "scratch"], choices=["kd", "scratch"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337, 1])
    ap.add_argument("--warmups", nargs="+", type=int, default=[20, 100])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--chars", type=int, default=15_000, help="score the first N characters of the held-out code")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=HERE / "results_kd_warmup.jsonl")
    ap.add_argument("--report", action="store_true", help="print the table of --results and stop")
    a = ap.parse_args()
    if not a.report:
        if not (a.work / "cache" / "manifest.json").is_file():
            raise SystemExit(f"{a.work}/cache: no teacher cache; run benchmarks/distill_gemma.py first.")
        for mode in a.modes:
            for warmup in a.warmups:
                for seed in a.seeds:
                    row = run_one(a.work, mode, seed, warmup, a.steps, a.lr, a.alpha, a.dropout, a.chars, a.threads,
                                  a.work / "warmup-probes")
                    print(json.dumps(row), flush=True)
                    with a.results.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in a.results.open(encoding="utf-8")] if a.results.is_file() else []
    print(table(rows))


if __name__ == "__main__":
    main()
