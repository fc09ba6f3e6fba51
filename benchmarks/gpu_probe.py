"""Training throughput and MFU of the ``small`` and ``large`` presets on this GPU: a markdown table.

    python benchmarks/gpu_probe.py --seconds 60                    # ~2 minutes: small, then large
    python benchmarks/gpu_probe.py --presets small --compile --seconds 90
    python benchmarks/gpu_probe.py --device cpu --presets micro --seconds 5 --seq 256   # the code path, anywhere

Each preset trains on random tokens (vocab 16,384; throughput does not depend on
the text) with the real :class:`vnmini.training.trainer.Trainer` step: bf16
autocast on CUDA, fused AdamW, gradient accumulation off (one micro batch per
step). The first steps (CUDA context, cuBLAS autotuning, ``torch.compile``) are
timed separately; tokens/s is over the steps after them. MFU = tokens/s ×
``flops_per_token`` (6N + attention) / the GPU's dense bf16 peak from
``dist.PEAK_FLOPS``. Writes the table to ``benchmarks/results_gpu.md``
(``--out``) as well as printing it; ``benchmarks/gpu_check.sh`` calls this.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VOCAB = 16384


class RandomTokens:
    """A BatchSource of seeded random token rows (enough rows that nothing repeats in a probe)."""

    def __init__(self, seq_len: int, rows: int = 100_000) -> None:
        self.seq_len, self.train_rows, self.val_rows = seq_len, rows, 0

    def rows(self, split: str, idx: np.ndarray, step: int):
        from vnmini.training.batch import Batch

        g = torch.Generator().manual_seed(int(step) * 7919 + int(idx[0]))
        x = torch.randint(0, VOCAB, (len(idx), self.seq_len + 1), generator=g)
        return Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous(), np.asarray(idx) * self.seq_len, step)


def probe(name: str, device: str, seq: int, micro: int, seconds: float, warm_steps: int, compile_: bool) -> dict:
    from vnmini.models import LlamaForCausalLM, preset
    from vnmini.training.config import TrainConfig
    from vnmini.training.trainer import Trainer

    mcfg = preset(name, vocab_size=VOCAB)
    torch.manual_seed(0)
    model = LlamaForCausalLM(mcfg)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=tmp, preset=name, seq_len=seq, micro_batch=micro, global_batch_tokens=seq * micro,
                          warmup_steps=0, eval_every=0, save_every=0, sample_tokens=0, device=device,
                          compile=compile_, progress=False, kernels="auto")
        tr = Trainer(cfg, model, RandomTokens(seq), log=lambda s: None)
        try:
            tr.module.train()
            sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
            t = time.perf_counter()
            for _ in range(warm_steps):
                tr.train_step()
            sync()
            warm = time.perf_counter() - t
            if tr.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0, n = time.perf_counter(), 0
            while n < 2 or time.perf_counter() - t0 < seconds:
                tr.train_step()  # returns python floats: one device sync per step, as in real training
                n += 1
            sync()
            dt = time.perf_counter() - t0
            tps = n * seq * micro / dt
            peak = tr.peak_flops
            mem = torch.cuda.max_memory_allocated() / 2**30 if tr.device.type == "cuda" else None
        finally:
            tr.close()
    return {"preset": name, "params": mcfg.num_parameters(), "seq": seq, "micro": micro, "steps": n,
            "warmup_s": warm, "tokens_per_s": tps, "mfu": tps * mcfg.flops_per_token(seq) / peak if peak else None,
            "mem_gib": mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,large")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=60.0, help="Timed seconds per preset (after warm-up).")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", default="small:16,large:8", help="Micro batch per preset (name:n,...), or one n.")
    ap.add_argument("--warm-steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results_gpu.md"))
    a = ap.parse_args()
    micro = ({k: int(v) for k, v in (x.split(":") for x in a.micro.split(","))} if ":" in a.micro
             else {p: int(a.micro) for p in a.presets.split(",")})
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and a.device.startswith("cuda") else "CPU"
    rows = [probe(p, a.device, a.seq, micro.get(p, 8), a.seconds, a.warm_steps, a.compile)
            for p in a.presets.split(",")]
    lines = [f"# GPU training probe ({gpu}, torch {torch.__version__}, {platform.node()})", "",
             f"`python benchmarks/gpu_probe.py --presets {a.presets} --seconds {a.seconds:g} --seq {a.seq}"
             + (" --compile" if a.compile else "") + "`: random tokens, vocab 16,384, bf16 autocast on CUDA, "
             "fused AdamW, one micro batch per optimizer step.", "",
             "| preset | params | seq × micro | timed steps | warm-up s | tokens/s | MFU | peak GiB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['preset']} | {r['params'] / 1e6:.0f}M | {r['seq']} × {r['micro']} | {r['steps']} | "
                     f"{r['warmup_s']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | "
                     + (f"{r['mem_gib']:.1f} |" if r["mem_gib"] is not None else "n/a |"))
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text, encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
