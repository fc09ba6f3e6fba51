"""What chat SFT costs the model's held-out statute prose, per SFT recipe (lr × length), measured side by side.

The quickstart's chat model is its best pretrained model fine-tuned on the statute
Q&A (``vnmini data sft-from-statutes``); that fine-tuning moves it away from raw
prose, and the held-out bits per byte of the chat model is the number the
quickstart is judged on. This script fine-tunes one base checkpoint with each
recipe through the real ``vnmini sft`` and scores every result with ``vnmini eval
--context`` (the profile's row length) on the same held-out text, next to the base itself, plus the SFT's
own validation bpb (held-out conversations: how well it learned to answer)::

    python benchmarks/sft_cost.py --base runs/qs-hour/teacher/final --data runs/qs-hour/sft.jsonl \\
        --heldout runs/qs-hour/heldout_eval.txt

Prints a markdown table and writes ``benchmarks/results_sft_cost.{jsonl,md}``.
Each recipe is ``lr:steps`` (equal steps are equal minutes: the quickstart gives
SFT a time budget); ``--data`` may mix in ``{"text"}`` replay lines
(``vnmini data sft-from-statutes --replay``), and results of each data file are
kept apart. Runs already in the results file are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from recipe_sweep import heldout_eval  # noqa: E402  (one scorer of held-out text for the benchmarks)
from recipe_sweep import run as vnmini  # noqa: E402  (one runner of CLI subprocesses for the benchmarks)

DEFAULT_RECIPES = "1e-3:200,3e-4:200,1e-3:100,1e-4:200"


def heldout_bpb(model: Path, text: Path, log: Path, threads: int, context: int) -> float:
    return float(heldout_eval(model, text, log, threads, context=context)["bpb"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="The pretrained checkpoint chat SFT starts from.")
    ap.add_argument("--data", type=Path, required=True, help="Messages JSONL (vnmini data sft-from-statutes).")
    ap.add_argument("--heldout", type=Path, required=True, help="Held-out prose every model is scored on.")
    ap.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"Comma list of lr:steps (default {DEFAULT_RECIPES}).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vnmini_sft_cost"))
    ap.add_argument("--out", type=Path, default=HERE / "results_sft_cost", help="Results prefix.")
    ap.add_argument("--profile", default="hour", help="Quickstart profile whose batch, context and schedule SFT uses.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="Redo recipes already in the results file.")
    a = ap.parse_args()
    for flag, p in (("--base", a.base), ("--data", a.data), ("--heldout", a.heldout)):
        if not p.exists():
            raise SystemExit(f"{flag} {p}: no such file or folder.")
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "sft_cost.log"
    jsonl = a.out.with_suffix(".jsonl")

    def results() -> dict[tuple[str, str, str], dict]:
        """Every run in the results file, the last line of each (base, data, recipe) winning (--force appends)."""
        lines = jsonl.read_text(encoding="utf-8").splitlines() if jsonl.is_file() else []
        return {(r["base"], r["data"], r["recipe"]): r for r in map(json.loads, filter(str.strip, lines))}

    done = set() if a.force else {k[2] for k in results() if k[:2] == (str(a.base), str(a.data))}
    from vnmini.quickstart import PROFILES, WARMUP_STEPS

    prof = PROFILES[a.profile]
    shape = ["--seq-len", str(prof.seq_len), "--global-batch-tokens", str(prof.global_batch_tokens), "--micro-batch",
             str(prof.micro_batch), "--schedule", prof.schedule, "--warmup-steps", str(WARMUP_STEPS)]
    base_bpb = heldout_bpb(a.base, a.heldout, log, a.threads, prof.seq_len)
    for recipe in a.recipes.split(","):
        if recipe in done:
            print(f"{recipe}: in {jsonl} already")
            continue
        lr, steps = float(recipe.split(":")[0]), int(recipe.split(":")[1])
        run = a.work / f"{a.data.stem}-{recipe.replace(':', '_')}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        vnmini(["sft", "--data", str(a.data), "--init-from", str(a.base), "--out", str(run), "--lr", f"{lr:g}",
                "--max-steps", str(steps), *shape, "--eval-every", "0", "--save-every", "0",
                "--sample-tokens", "0", "--threads", str(a.threads), "--no-progress"], log, 3600)
        wall = time.perf_counter() - t0
        prov = json.loads((run / "final" / "vnmini.json").read_text(encoding="utf-8"))
        r = {"base": str(a.base), "data": str(a.data), "recipe": recipe, "lr": lr, "epochs": prov.get("epochs"),
             "steps": prov["step"], "sft_val_bpb": prov.get("eval_bpb"), "base_heldout_bpb": base_bpb,
             "heldout_bpb": heldout_bpb(run / "final", a.heldout, log, a.threads, prof.seq_len),
             "wall_s": round(wall, 1),
             "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        print(f"{recipe}: held-out {r['heldout_bpb']:.4f} (base {base_bpb:.4f}), SFT val {r['sft_val_bpb']:.4f}, "
              f"{r['steps']} steps, {wall:.0f} s")
        with jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    rows_all = list(results().values())  # the whole file: every base and data file, and any concurrent run
    lines = ["# What chat SFT costs held-out prose (`benchmarks/sft_cost.py`)", "",
             f"Each row fine-tunes the base through `vnmini sft --max-steps N` with the quickstart `{a.profile}` "
             f"profile's context, batch and schedule ({prof.seq_len} tokens, {prof.global_batch_tokens:,}-token "
             f"steps, {prof.schedule}, {WARMUP_STEPS} warmup steps) and scores it with `vnmini eval --context "
             f"{prof.seq_len}` on `{a.heldout}`. SFT val bpb is the assistant tokens of its held-out conversations "
             "(how well it answers); epochs count the SFT rows, replay text included. Lower is better in both.", "",
             "| base | SFT data | lr | steps | SFT epochs | held-out bpb | cost vs base | SFT val bpb | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows_all, key=lambda r: (r["base"], r["data"], r["lr"], r["steps"])):
        lines.append(f"| `{r['base']}` ({r['base_heldout_bpb']:.4f}) | `{Path(r['data']).name}` | {r['lr']:g} | "
                     f"{r['steps']} | {r['epochs']:.2f} | **{r['heldout_bpb']:.4f}** | "
                     f"{r['heldout_bpb'] - r['base_heldout_bpb']:+.4f} | {r['sft_val_bpb']:.4f} | {r['wall_s']:.0f} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
