"""Tokens/s of ``vnmini train`` vs a plain nanoGPT-style torch loop: same model, batch and data, one run.

    python benchmarks/train_speed.py --steps 30 --preset tiny --threads 2

Both sides start from the same seeded ``tiny`` model and read the same token
windows of the default statute corpus (fetched, tokenized with a 16k BPE and
sharded into ``$VNMINI_BENCH`` (default ``/tmp/vnmini_bench``) on first use).
The plain loop is what nanoGPT's ``train.py`` does on CPU: random windows from
a memmap, ``F.cross_entropy``, AdamW (torch default implementation), clip,
step. Ours is the real :class:`vnmini.training.trainer.Trainer` (numba cross-entropy
with ``--kernels auto``, fused AdamW, metrics JSONL, no eval/checkpoint inside
the timed steps). Rounds alternate A/B/A/B so background load hits both sides;
the first step of each round is a warm-up outside the timer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BENCH = Path("/tmp/vnmini_bench")


def bench_data(root: Path = BENCH, vocab: int = 16384) -> tuple[Path, Path]:
    """(shard folder, tokenizer folder) for the default corpus, built once and cached."""
    from vnmini.data.fetch import fetch_default_corpus
    from vnmini.data.shards import prepare_shards
    from vnmini.text.tokenizer import VnTokenizer
    from vnmini.text.tokenizer_train import train_tokenizer

    corpus, tokdir, shards = root / "corpus", root / f"tok{vocab}", root / f"shards{vocab}"
    if not (corpus / "manifest.json").is_file():
        fetch_default_corpus(corpus)
    if not (tokdir / "tokenizer.json").is_file():
        train_tokenizer([corpus / "train"], vocab_size=vocab).save(tokdir)
    if not (shards / "manifest.json").is_file():
        tok = VnTokenizer.load(tokdir)
        prepare_shards([corpus / "train"], tok, shards, val_fraction=0.02, progress=False)
        prepare_shards([corpus / "heldout"], tok, root / f"heldout{vocab}", val_fraction=0.0, progress=False,
                       force=True)
    return shards, tokdir


def plain_loop(model, windows, steps: int, batch: int, seq: int, lr: float) -> float:
    """nanoGPT-style: x, y from the memmap; logits; F.cross_entropy; AdamW; clip. Returns tokens/s."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    t0 = None
    for s in range(steps + 1):
        if s == 1:
            t0 = time.perf_counter()
        x, y = windows(s)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return steps * batch * seq / (time.perf_counter() - t0)


def ours(shards: Path, tokdir: Path, out: Path, steps: int, batch: int, seq: int, lr: float, preset: str,
         kernels: str) -> float:
    from vnmini.training.pretrain import train

    shutil.rmtree(out, ignore_errors=True)
    train(data=str(shards), tokenizer=str(tokdir), preset=preset, out=str(out), seq_len=seq, micro_batch=batch,
          global_batch_tokens=batch * seq, max_steps=steps + 1, lr=lr, warmup_steps=1, eval_every=0, save_every=0,
          eval_tokens=0, sample_tokens=0, progress=False, kernels=kernels, log_every=10**9)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # elapsed_s at the end of step 1 vs the last step: the same warm-up exclusion as the plain loop.
    dt = recs[-1]["elapsed_s"] - recs[0]["elapsed_s"]
    return steps * batch * seq / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from vnmini.data.shards import ShardReader
    from vnmini.models import LlamaForCausalLM, preset
    from vnmini.text.tokenizer import VnTokenizer
    from vnmini.training.trainer import global_rows

    shards, tokdir = bench_data()
    tok = VnTokenizer.load(tokdir)
    reader = ShardReader(shards, "train")
    n_rows = (len(reader) - 1) // args.seq

    def windows(step: int):  # the same rows our trainer reads (its seeded order), so the data is identical
        idx = global_rows(1337, step, args.batch, n_rows)
        buf = torch.from_numpy(np.stack([reader.read(int(j) * args.seq, args.seq + 1) for j in idx]))
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()

    rows = []
    for r in range(args.rounds):
        torch.manual_seed(1337)
        model = LlamaForCausalLM(preset(args.preset, vocab_size=tok.vocab_size))
        a = plain_loop(model, windows, args.steps, args.batch, args.seq, 3e-3)
        b = ours(shards, tokdir, BENCH / "speed_run", args.steps, args.batch, args.seq, 3e-3, args.preset, "auto")
        c = ours(shards, tokdir, BENCH / "speed_run", args.steps, args.batch, args.seq, 3e-3, args.preset, "torch")
        rows.append((a, b, c))
        print(f"round {r + 1}: plain {a:,.0f} tok/s, vnmini train {b:,.0f} tok/s (kernels auto), {c:,.0f} (torch CE)")
    a, b, c = (float(np.median(col)) for col in zip(*rows, strict=True))
    params = preset(args.preset, vocab_size=tok.vocab_size).num_parameters()
    print(f"\n{args.preset} preset ({params / 1e6:.1f}M params, vocab {tok.vocab_size}), batch {args.batch}×{args.seq} "
          f"tokens/step, {args.steps} timed steps, {args.threads} threads, median of {args.rounds} rounds\n")
    print("| loop | tokens/s | vs plain |\n|---|---:|---:|")
    print(f"| plain nanoGPT-style torch loop | {a:,.0f} | 1.00x |")
    print(f"| `vnmini train` (--kernels auto: numba CE, fused AdamW) | {b:,.0f} | {b / a:.2f}x |")
    print(f"| `vnmini train` (--kernels torch, fused AdamW) | {c:,.0f} | {c / a:.2f}x |")


if __name__ == "__main__":
    main()
