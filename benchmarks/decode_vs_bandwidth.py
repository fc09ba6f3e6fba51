"""Decode speed vs this CPU's memory-bandwidth limit, and vs `transformers` eager, in one run.

Targets (issue #9): GGUF q4_0/q8_0 decode ≥ 70% of the measured memory-bandwidth
ceiling for a model larger than the CPU caches, and ≥ 10x `transformers` eager
generation on the same weights.

    python benchmarks/decode_vs_bandwidth.py                 # `small` preset shape (126M), ~10 min on 2 cores
    python benchmarks/decode_vs_bandwidth.py --preset mini   # 25M, quicker
    python benchmarks/decode_vs_bandwidth.py --quick         # micro shape: a smoke test of the script

What it does:
1. builds a random model of the preset shape (vocab 16,384; the tokenizer is a
   small BPE, the extra embedding rows are padding — speed does not depend on
   the weights' values) and saves it as a vnmini checkpoint;
2. exports GGUF q8_0 and q4_0 with :func:`vnmini.export.to_gguf`;
3. runs :func:`vnmini.eval.bench.bench` on the checkpoint (torch) and both GGUFs —
   a fresh process per model, warm-up, median of repeats — with the measured
   memory-bandwidth ceiling;
4. times `transformers.LlamaForCausalLM.from_pretrained(checkpoint)` eager
   greedy generation (KV cache on) with the same prompt length, new-token count
   and threads, in its own process;
5. writes the table to ``benchmarks/results_bench.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

HF_CHILD = r"""
import json, statistics, sys, time, torch
from transformers import LlamaForCausalLM
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
model = LlamaForCausalLM.from_pretrained(spec["ckpt"], attn_implementation="eager", dtype=torch.float32).eval()
ids = torch.tensor([spec["ids"]])
P, D = ids.shape[1], spec["decode_tokens"]
def run():
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(ids, use_cache=True)                # prefill alone, to split prefill from decode
        t1 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=D, min_new_tokens=D,
                             do_sample=False, use_cache=True, pad_token_id=0)
        t2 = time.perf_counter()
    assert out.shape[1] == P + D
    return {"prefill_s": t1 - t0, "generate_s": t2 - t1}
run()  # warm-up
runs = [run() for _ in range(spec["repeats"])]
pre = statistics.median(r["prefill_s"] for r in runs)
gen = statistics.median(r["generate_s"] for r in runs)
print(json.dumps({"prefill_tok_s": P / pre, "decode_tok_s": D / max(gen - pre, 1e-9),
                  "generate_s": gen, "prefill_s": pre, "runs": runs}))
"""


def build(args, work: Path) -> Path:
    from vnmini.checkpoint import save_checkpoint
    from vnmini.models import LlamaForCausalLM, preset
    from vnmini.text.tokenizer_train import train_tokenizer

    cfg = preset(args.preset, vocab_size=16384, max_position_embeddings=1024)
    tok = train_tokenizer([str(ROOT / "vnmini" / "assets" / "vi_sample.txt")], vocab_size=16384)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # small random weights, like a trained model's scale (keeps logits finite)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    return save_checkpoint(model, work / f"{args.preset}-ckpt", tokenizer=tok)


def hf_eager(ckpt: Path, ids: list[int], decode_tokens: int, repeats: int, threads: int) -> dict:
    spec = {"ckpt": str(ckpt), "ids": ids, "decode_tokens": decode_tokens, "repeats": repeats, "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, "-c", HF_CHILD, json.dumps(spec)], capture_output=True, text=True, env=env,
                       timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"transformers run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--quick", action="store_true", help="micro preset, few tokens: checks the script runs")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse the model and GGUFs already in --work")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown table (default benchmarks/results_bench.md; --quick prints only)")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.decode_tokens, args.prompt_tokens, args.repeats = "micro", 16, 16, 2
    from vnmini.eval.bench import bench
    from vnmini.eval.bench_child import prompt_ids
    from vnmini.export import to_gguf
    from vnmini.models import preset

    tmp = tempfile.TemporaryDirectory(prefix="vnmini-bw-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    load_start = os.getloadavg()[0]
    ckpt = work / f"{args.preset}-ckpt"
    ggufs = [work / f"{args.preset}.{q}.gguf" for q in ("q8_0", "q4_0")]
    if not (args.reuse and (ckpt / "config.json").is_file() and all(p.is_file() for p in ggufs)):
        ckpt = build(args, work)
        for path, q in zip(ggufs, ("q8_0", "q4_0"), strict=True):
            to_gguf(ckpt, path, quant=q, verify=False, force=True)
    print(f"built and exported in {time.time() - t0:.0f}s", flush=True)

    res = bench([ckpt, *ggufs], prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                repeats=args.repeats, warmup=1, threads=args.threads, out_dir=work / "bench")
    import vnmini

    ids = prompt_ids(vnmini.load(ckpt), args.prompt_tokens)  # the same ids the bench children fed
    hf = hf_eager(ckpt, ids, args.decode_tokens, args.repeats, args.threads)

    bw = res["bandwidth"]
    rows = res["rows"]
    cfg = preset(args.preset)
    lines = [
        "# Decode speed vs memory bandwidth and `transformers` eager",
        "",
        f"Run: `python benchmarks/decode_vs_bandwidth.py{' --quick' if args.quick else ''}"
        f"{'' if args.quick or args.preset == 'small' else ' --preset ' + args.preset}` on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
        f"L3 {_l3()}; {time.strftime('%Y-%m-%d')}; load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end "
        "(the machine is shared: other processes lower every number, the ceiling included).",
        f"Model: random `{args.preset}` preset shape ({cfg.num_hidden_layers} x {cfg.hidden_size}, "
        f"GQA {cfg.num_attention_heads}/{cfg.num_key_value_heads}, FFN {cfg.intermediate_size}, vocab 16,384, tied "
        f"embeddings, {cfg.num_parameters() / 1e6:.0f}M parameters). Prompt {args.prompt_tokens} tokens, "
        f"{args.decode_tokens} greedy new tokens, median of {args.repeats} runs after 1 warm-up, a fresh process "
        "per model.",
        "",
        f"Memory bandwidth (measured, 512 MiB streaming read, median of 5): **{bw['read_gbps']:.1f} GB/s** "
        f"(1 thread {bw['read_1thread_gbps']:.1f}; copy {bw['copy_gbps']:.1f} GB/s). Decode ceiling = bandwidth / "
        "weight bytes read per token (the whole tied embedding counts: it is the output matrix too).",
        "",
        "| runtime | weights | MB read / token | prefill tok/s | decode tok/s | TTFT ms | peak RSS MB "
        "| ceiling tok/s | share of ceiling | vs transformers eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    hf_bytes = rows[0]["bytes_per_token"]
    lines.append(f"| transformers eager (generate, KV cache) | float32 | {hf_bytes / 1e6:.1f} | "
                 f"{hf['prefill_tok_s']:.1f} | {hf['decode_tok_s']:.2f} | – | – | "
                 f"{bw['read_gbps'] * 1e9 / hf_bytes:.1f} | "
                 f"{100 * hf['decode_tok_s'] / (bw['read_gbps'] * 1e9 / hf_bytes):.0f}% | 1.0x |")
    for r in rows:
        name = {"torch": "vnmini torch (KV cache)", "gguf": "llama.cpp (vnmini GGUF)"}[r["backend"]]
        lines.append(f"| {name} | {r['quant']} | {r['bytes_per_token'] / 1e6:.1f} | {r['prefill_tok_s']:.1f} | "
                     f"{r['decode_tok_s']:.1f} | {r['ttft_ms']:.0f} | {r['peak_rss_bytes'] / 1e6:.0f} | "
                     f"{r['ceiling_tok_s']:.1f} | {100 * r['share_of_ceiling']:.0f}% | "
                     f"{r['decode_tok_s'] / hf['decode_tok_s']:.1f}x |")
    lines += ["", "Targets:"]
    for r in rows[1:]:
        share, speedup = r["share_of_ceiling"], r["decode_tok_s"] / hf["decode_tok_s"]
        lines.append(f"- GGUF {r['quant']}: {100 * share:.0f}% of the bandwidth ceiling "
                     f"({'meets' if share >= 0.7 else 'misses'} ≥ 70%), {speedup:.1f}x transformers eager "
                     f"({'meets' if speedup >= 10 else 'misses'} ≥ 10x).")
    text = "\n".join(lines) + "\n"
    from vnmini.atomic import write_json, write_text

    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results_bench.md")
    if out is not None:
        write_text(out, text)
        write_json(out.with_suffix(".json"), {"bench": {k: v for k, v in res.items() if k != "markdown"},
                                             "transformers_eager": hf})
    print(text)
    if tmp:
        tmp.cleanup()


def _l3() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("L3"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
