"""Prove an ONNX export against the torch model it came from (``verify.json`` / ``verify.md``).

Oracle: our torch decoder in fp32 on the same token ids, full forward with no
cache (so the ONNX cached path is checked against an uncached computation).

- parity (every dtype/quant, gated for fp32): ONNX Runtime logits for a
  prefill of ``prompt_len`` ids, then ``decode_steps`` single-token steps
  through the KV cache (the first call has past length 0); max relative error
  = max|onnx - torch| / max|torch| per phase. fp32 must be <= 1e-4.
- greedy: ``decode_steps`` greedy tokens from torch's KV-cache generator vs
  ONNX Runtime's; fp32 must match token for token.
- quality (reported for all, gated loosely for fp16/int8/int4): on held-out
  text, top-1 agreement, mean KL(torch || onnx) in nats, and bits per byte of
  both (Δbpb = onnx - torch).
- finite (every variant, gated): every torch and ONNX logit is finite and no
  compared number is NaN (a NaN compares false with every threshold, so NaN
  weights would otherwise pass as "no error"); the summary names the
  non-finite side.

    report = verify_onnx("out/onnx-int8", "runs/tiny/final")
    write_report("out/onnx-int8", report)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vnmini.atomic import write_json, write_text
from vnmini.errors import VnminiError
from vnmini.export.result import read_verify_text
from vnmini.metrics import BpbMeter, kl_divergence, max_relative_error, top1_agreement

FP32_MAX_REL_ERR = 1e-4
# Quantized variants are not bit-faithful; this only catches a broken graph (random
# weights, wrong cache wiring) — the numbers themselves go in the report.
QUANT_MAX_KL = 1.0

# Held-out text when none is given (not from the statutes the default corpus trains on).

def _text_ids(tokenizer, text: str | None, n: int, vocab: int, seed: int) -> list[int]:
    """``n`` ids: the tokenized text (BOS first) when there is a tokenizer, else random ids."""
    if tokenizer is not None:
        ids = tokenizer.encode(read_verify_text(text), add_bos=True)
        if len(ids) >= n:
            return ids[:n]
    else:
        ids = []
    rng = np.random.default_rng(seed)
    return ids + [int(i) for i in rng.integers(3, vocab, n - len(ids))]


def verify_onnx(
    folder: str | Path,
    checkpoint: Any,
    text: str | Path | None = None,
    prompt_len: int = 16,
    decode_steps: int = 32,
    quality_tokens: int = 1024,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Check the ONNX folder against ``checkpoint`` (a path or a loaded :class:`Checkpoint`)."""
    from vnmini.checkpoint import load_checkpoint
    from vnmini.export.onnx_export import read_meta
    from vnmini.runtime.onnx_backend import ONNXGenerator
    from vnmini.runtime.torch_backend import TorchGenerator

    folder = Path(folder)
    ckpt = load_checkpoint(checkpoint, dtype=torch.float32) if isinstance(checkpoint, str | Path) else checkpoint
    model = ckpt.model.float().eval()
    tok = ckpt.tokenizer
    cfg = model.config
    meta = read_meta(folder)
    variant = meta.get("quant", "none") if meta.get("quant", "none") != "none" else meta.get("dtype", "fp32")
    gen = ONNXGenerator(folder, threads=threads)
    ctx = min(cfg.max_position_embeddings, gen.context_length)
    prompt_len = min(prompt_len, max(1, ctx // 4))
    decode_steps = min(decode_steps, ctx - prompt_len - 1)

    # ---- parity: prefill + cached steps vs an uncached torch forward
    ids = _text_ids(tok, text, prompt_len + decode_steps, cfg.vocab_size, seed)
    with torch.inference_mode():
        ref = model(torch.tensor([ids]))[0].numpy()
    gen.reset()
    pre = gen.step(ids[:prompt_len])
    dec = np.stack([gen.step([i])[0] for i in ids[prompt_len:]]) if decode_steps > 0 else pre[:0]
    parity = {
        "prefill_tokens": prompt_len,
        "decode_steps": decode_steps,
        "prefill_max_rel_err": max_relative_error(pre, ref[:prompt_len]),
        "decode_max_rel_err": max_relative_error(dec, ref[prompt_len:]) if decode_steps else 0.0,
        "max_abs_err": float(np.abs(np.concatenate([pre, dec]) - ref).max()),
        "finite": bool(np.isfinite(pre).all() and np.isfinite(dec).all()),
    }

    # ---- greedy generation, token for token
    prompt = ids[:prompt_len]
    tgen = TorchGenerator(model, tok, source=getattr(ckpt, "path", None))
    try:
        t_ids = [ev.id for ev in tgen.generate(prompt, max_new_tokens=decode_steps, temperature=0) if ev.id >= 0]
        o_ids = [ev.id for ev in gen.generate(prompt, max_new_tokens=decode_steps, temperature=0) if ev.id >= 0]
    except VnminiError as e:  # NaN/inf logits: the report fails (check "finite") instead of the run crashing
        greedy = {"tokens": 0, "equal": False, "first_difference": 0, "error": str(e)}
    else:
        first_diff = next((i for i, (a, b) in enumerate(zip(t_ids, o_ids, strict=False)) if a != b),
                          None if len(t_ids) == len(o_ids) else min(len(t_ids), len(o_ids)))
        greedy = {"tokens": len(t_ids), "equal": t_ids == o_ids, "first_difference": first_diff}

    # ---- quality on held-out text (windows of at most the context length; no filler ids)
    if tok is not None:
        stream = tok.encode(read_verify_text(text), add_bos=True)[:quality_tokens]
    else:
        stream = _text_ids(None, None, quality_tokens, cfg.vocab_size, seed + 1)
    if len(stream) < 8:
        stream = _text_ids(tok, text, 8, cfg.vocab_size, seed + 1)
    t_rows, o_rows, targets = [], [], []
    for s in range(0, len(stream) - 1, ctx):
        win = stream[s:s + ctx + 1]  # ctx inputs predicting the next ctx ids
        if len(win) < 2:
            break
        with torch.inference_mode():
            t_rows.append(model(torch.tensor([win[:-1]]))[0].double().numpy())
        o_rows.append(gen.logits(win[:-1]).astype(np.float64))
        targets += win[1:]
    t_logits, o_logits = np.concatenate(t_rows), np.concatenate(o_rows)
    quality: dict[str, Any] = {
        "tokens": len(targets),
        "top1_agreement": top1_agreement(o_logits, t_logits),
        "kl_torch_onnx": kl_divergence(t_logits, o_logits),
    }
    if tok is not None:
        meter_t, meter_o = BpbMeter(tok.token_bytes), BpbMeter(tok.token_bytes)
        meter_t.add(t_logits, np.asarray(targets))
        meter_o.add(o_logits, np.asarray(targets))
        quality.update({"bytes": meter_t.bytes, "bpb_torch": meter_t.bpb, "bpb_onnx": meter_o.bpb})
        quality["delta_bpb"] = quality["bpb_onnx"] - quality["bpb_torch"]

    nonfinite = {"torch": int((~np.isfinite(ref)).sum() + (~np.isfinite(t_logits)).sum()),
                 "onnx": int((~np.isfinite(pre)).sum() + (~np.isfinite(dec)).sum() + (~np.isfinite(o_logits)).sum())}
    numbers = {"prefill_max_rel_err": parity["prefill_max_rel_err"], "decode_max_rel_err": parity["decode_max_rel_err"],
               "max_abs_err": parity["max_abs_err"], "top1_agreement": quality["top1_agreement"],
               "kl_torch_onnx": quality["kl_torch_onnx"],
               **{k: quality[k] for k in ("bpb_torch", "bpb_onnx", "delta_bpb") if k in quality}}
    nonfinite["numbers"] = [k for k, v in numbers.items() if not math.isfinite(v)]
    checks: dict[str, bool] = {"finite": not nonfinite["torch"] and not nonfinite["onnx"] and not nonfinite["numbers"]}
    if variant == "fp32":
        checks["prefill_max_rel_err<=1e-4"] = parity["prefill_max_rel_err"] <= FP32_MAX_REL_ERR
        checks["decode_max_rel_err<=1e-4"] = parity["decode_max_rel_err"] <= FP32_MAX_REL_ERR
        checks["greedy_equal"] = greedy["equal"]
    else:
        kl = quality["kl_torch_onnx"]
        checks[f"kl<={QUANT_MAX_KL}"] = math.isfinite(kl) and kl <= QUANT_MAX_KL
    checks = {k: bool(v) for k, v in checks.items()}
    passed = all(checks.values())
    failed = [k for k, v in checks.items() if not v]
    if not checks["finite"]:
        sides = [f"{side} logits non-finite ({nonfinite[side]} values)" for side in ("torch", "onnx")
                 if nonfinite[side]]
        if nonfinite["torch"]:
            sides.append("the checkpoint itself yields NaN/inf: its weights are corrupt or diverged")
        elif not sides:
            sides = [f"NaN in {', '.join(nonfinite['numbers'])}"]
        failed[failed.index("finite")] = "finite: " + "; ".join(sides)
    summary = (f"{variant}: prefill rel err {parity['prefill_max_rel_err']:.2e}, decode rel err "
               f"{parity['decode_max_rel_err']:.2e}, greedy {'equal' if greedy['equal'] else 'differs'}, "
               f"top-1 {quality['top1_agreement']:.3f}, KL {quality['kl_torch_onnx']:.2e}"
               + (f", Δbpb {quality['delta_bpb']:+.4f}" if "delta_bpb" in quality else "")
               + ("" if passed else f"; FAILED: {', '.join(failed)}"))
    return {"variant": variant, "passed": passed, "checks": checks, "summary": summary, "parity": parity,
            "greedy": greedy, "quality": quality, "nonfinite": nonfinite, "providers": gen.providers}


def write_report(folder: str | Path, report: dict[str, Any]) -> None:
    """``verify.json`` and a human-readable ``verify.md`` beside the model."""
    folder = Path(folder)
    write_json(folder / "verify.json", report)
    p, g, q = report["parity"], report["greedy"], report["quality"]
    lines = [
        f"# ONNX verification: {report['variant']} — {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        "Oracle: the torch model in fp32, full forward without cache, same token ids.",
        "",
        f"Summary: {report['summary']}",
        "",
        "| check | value |",
        "|---|---|",
        f"| prefill max rel err ({p['prefill_tokens']} tokens) | {p['prefill_max_rel_err']:.3e} |",
        f"| decode max rel err ({p['decode_steps']} cached steps) | {p['decode_max_rel_err']:.3e} |",
        f"| max abs err | {p['max_abs_err']:.3e} |",
        f"| greedy tokens equal ({g['tokens']} torch tokens) | {g['equal']} |",
        f"| top-1 agreement ({q['tokens']} held-out tokens) | {q['top1_agreement']:.4f} |",
        f"| mean KL(torch ‖ onnx), nats | {q['kl_torch_onnx']:.3e} |",
    ]
    if "bpb_torch" in q:
        lines += [f"| bits/byte torch → onnx ({q['bytes']} bytes) | {q['bpb_torch']:.4f} → {q['bpb_onnx']:.4f} "
                  f"(Δ {q['delta_bpb']:+.4f}) |"]
    lines += ["", "Checks: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in report["checks"].items()), ""]
    write_text(folder / "verify.md", "\n".join(lines))
