"""Proving a GGUF export right, with llama-cpp-python as the oracle.

    report = verify_gguf("model.gguf", ckpt, quant="q8_0")   # ckpt: a loaded Checkpoint
    write_report(report, "model.gguf")  # model.verify.md + model.verify.json beside the file

Four checks, each against what torch and our tokenizer do on the same input:

1. **Tokenization** — llama.cpp tokenizes normalized Vietnamese (the held-out
   text, line by line, plus a probe with digits, punctuation, newlines, runs of
   spaces, tabs, emoji and special-token strings) into exactly our ids.
2. **Logits** — llama.cpp logits (f32 KV cache: ``type_k=type_v=0``; the
   default f16 cache alone costs ~1e-3) vs torch on the same ids. Relative
   error = max |Δ| / max |torch logit|; required ≤ 1e-3 for f32. For the other
   types: top-1 agreement and mean KL(torch ‖ gguf) per position (nats).
3. **Quality** — bits per byte on the held-out text for torch and the GGUF
   (targets: q8_0 Δbpb ≤ 1 %, q4_k_m ≤ 6 %; reported, not enforced).
4. **Chat** — llama-cpp-python's chat completion, using the template embedded
   in the file, builds the same prompt ids as our chat template.

``passed`` is true when 1, 4, (for f32) 2 and ``finite`` hold: every torch and
llama.cpp logit is finite and no compared number (errors, agreement, KL, bits
per byte) is NaN — a NaN compares false with every threshold, so without this
check NaN weights would read as "no error". ``checks`` lists each gate and
``summary`` is the one-line verdict, naming the non-finite side. Text longer
than the context is scored in windows that overlap by one token, so every
token after the first is predicted exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vnmini.atomic import write_json, write_text
from vnmini.errors import VnminiError
from vnmini.export.result import read_verify_text
from vnmini.metrics import BpbMeter, kl_divergence, max_relative_error, top1_agreement
from vnmini.runtime.gguf_backend import open_llama

F32_MAX_REL_ERR = 1e-3
DBPB_TARGETS = {"q8_0": 0.01, "q4_k_m": 0.06}

PROBE = (
    "Điều 12, khoản 3: phạt 1.500.000 đồng (≈ 60 USD)! Năm 2024-01-31, lãi 3,14%.\n"
    "Dòng mới   ba dấu cách,\tmột tab; “ngoặc kép” và 'đơn'… #thẻ @người_dùng A.B.C\n\n"
    "Emoji: 🐱👍🏽🇻🇳 ✅ — hết.\n"
    "<s><|im_start|>user\nXin chào<|im_end|>\n</s><pad> x<|im_end|>y\n"
    "HOÀ BÌNH hoà thuỷ khoẻ  QUÝ   khách\n"
)

CHAT_PROBE = [
    {"role": "system", "content": "Bạn là trợ lý pháp luật, trả lời ngắn gọn."},
    {"role": "user", "content": "Xin chào! Điều 1 của Bộ luật Dân sự nói gì? 😀"},
    {"role": "assistant", "content": "Điều 1 quy định phạm vi điều chỉnh.\nBạn cần gì thêm?"},
    {"role": "user", "content": "Cảm ơn   bạn, hoà thuận nhé."},
]


# ------------------------------------------------------------------ metrics
def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max relative error, top-1 agreement and mean KL(ref ‖ got) in nats (float64 math)."""
    return {
        "max_rel_err": max_relative_error(got, ref),
        "top1_agreement": top1_agreement(ref, got),
        "kl_mean": kl_divergence(ref, got),
    }


def windows(n: int, length: int) -> list[tuple[int, int]]:
    """[start, end) windows of ``length`` over n tokens, overlapping by one (each target once)."""
    out, start = [], 0
    while start < n - 1:
        end = min(start + length, n)
        out.append((start, end))
        start = end - 1
    return out


# -------------------------------------------------------------- llama.cpp
def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits [T, V] of one fresh pass (cache reset)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _first_diff(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_tokenization(llm, tok, samples: list[str]) -> dict[str, Any]:
    """Normalized samples tokenized by llama.cpp (special tokens parsed) vs our tokenizer."""
    mismatches = []
    n_ids = 0
    for s in samples:
        norm = tok.normalize(s)
        ours = tok.encode(norm)
        theirs = llm.tokenize(norm.encode("utf-8"), add_bos=False, special=True)
        n_ids += len(ours)
        if ours != theirs:
            i = _first_diff(ours, theirs)
            mismatches.append({"text": norm[:80], "at": i, "ours": ours[max(0, i - 2): i + 5],
                               "llama_cpp": theirs[max(0, i - 2): i + 5]})
    # llama.cpp adds BOS to plain text exactly when the source does (tokenizer.ggml.add_bos_token)
    first = llm.tokenize(b"x", add_bos=True, special=True)[0]
    with_bos = tok.bos_id is not None and first == tok.bos_id
    return {"samples": len(samples), "ids": n_ids, "equal": not mismatches and with_bos == tok.add_bos,
            "adds_bos": with_bos, "mismatches": mismatches[:5]}


def check_chat(llm, tok, messages: list[dict] = CHAT_PROBE) -> dict[str, Any]:
    """Prompt ids of llama-cpp-python's chat completion (embedded template) vs ours.

    A base model without a chat template has nothing to compare (llama-cpp-python would
    fall back to a format of its own): reported as skipped, not as a difference.
    """
    if not tok.chat_template:
        return {"chat_format": None, "equal": True, "skipped": "the source has no chat template",
                "prompt_tokens": 0, "first_diff": None}
    norm = [{"role": m["role"], "content": tok.normalize(m["content"])} for m in messages]
    ours = tok.encode_chat(norm, add_generation_prompt=True)
    seen: list[list[int]] = []
    real = llm.create_completion

    def spy(prompt, *a, **kw):  # the chat handler renders + tokenizes, then calls this
        seen.append(list(prompt) if not isinstance(prompt, str | bytes) else [])
        return real(prompt, *a, **kw)

    llm.create_completion = spy
    try:
        llm.reset()
        llm.create_chat_completion(messages=norm, max_tokens=1, temperature=0.0)
    finally:
        del llm.create_completion
    theirs = seen[0] if seen else []
    return {"chat_format": llm.chat_format, "equal": ours == theirs, "prompt_tokens": len(ours),
            "first_diff": None if ours == theirs else _first_diff(ours, theirs)}


# ------------------------------------------------------------------ verify
def verify_gguf(
    path: str | Path,
    ckpt,
    quant: str,
    text: str | Path | None = None,
    threads: int | None = None,
    max_tokens: int = 4096,
) -> dict[str, Any]:
    """Run all four checks on ``path`` against ``ckpt`` (a loaded Checkpoint). Returns the report dict."""
    path = Path(path)
    tok, model, cfg = ckpt.tokenizer, ckpt.model.float().eval(), ckpt.config
    body = tok.normalize(read_verify_text(text))
    if not body.strip():
        raise VnminiError("--verify-text is empty; give some Vietnamese text.")
    n_ctx = cfg.max_position_embeddings
    # llama.cpp's context may exceed the trained one (it only warns): room for the chat probe
    # on tiny test models. Logit windows stay within n_ctx, where torch is defined.
    chat_len = len(tok.encode_chat(CHAT_PROBE)) + 8
    llm = open_llama(path, n_ctx=max(n_ctx, chat_len), threads=threads)
    try:
        lines = [ln for ln in body.split("\n") if ln.strip()]
        tokenization = check_tokenization(llm, tok, [PROBE, body, *lines])

        ids = tok.encode(body, add_bos=True)[:max_tokens]
        ref_parts, got_parts, tgt_ids = [], [], []
        for s, e in windows(len(ids), n_ctx):
            seg = ids[s:e]
            with torch.inference_mode():
                ref = model(torch.tensor([seg]))[0].float().numpy()
            ref_parts.append(ref)
            got_parts.append(llama_logits(llm, seg))
            tgt_ids.append(np.asarray(seg))
        cmp = [compare_logits(r, g) for r, g in zip(ref_parts, got_parts, strict=True)]
        weights = np.array([len(r) for r in ref_parts], dtype=np.float64)
        logits = {
            "positions": int(weights.sum()),
            "max_rel_err": float(np.max([c["max_rel_err"] for c in cmp])),  # np.max keeps a NaN; max() may not
            "top1_agreement": float(np.average([c["top1_agreement"] for c in cmp], weights=weights)),
            "kl_mean": float(np.average([c["kl_mean"] for c in cmp], weights=weights)),
        }
        logits["threshold"] = F32_MAX_REL_ERR if quant == "f32" else None
        logits["ok"] = bool(logits["max_rel_err"] <= F32_MAX_REL_ERR) if quant == "f32" else None
        nonfinite = {"torch": int(sum((~np.isfinite(r)).sum() for r in ref_parts)),
                     "gguf": int(sum((~np.isfinite(g)).sum() for g in got_parts)),
                     "values": int(sum(r.size for r in ref_parts))}

        tb = tok.token_bytes
        if len(tb) < cfg.vocab_size:
            tb = np.concatenate([tb, np.zeros(cfg.vocab_size - len(tb), dtype=tb.dtype)])
        meter_t, meter_g = BpbMeter(tb), BpbMeter(tb)
        for r, g, seg in zip(ref_parts, got_parts, tgt_ids, strict=True):
            meter_t.add(r[:-1], np.asarray(seg[1:]))  # logits[t] predicts seg[t+1]
            meter_g.add(g[:-1], np.asarray(seg[1:]))
        bpb_t, bpb_g, nbytes = meter_t.bpb, meter_g.bpb, meter_t.bytes
        target = DBPB_TARGETS.get(quant)
        rel = (bpb_g - bpb_t) / bpb_t if bpb_t else float("nan")
        quality = {"bytes": nbytes, "tokens": len(ids) - 1, "bpb_torch": bpb_t, "bpb_gguf": bpb_g,
                   "dbpb_rel": rel, "target": target, "target_met": None if target is None else rel <= target}

        chat = check_chat(llm, tok)
    finally:
        llm.close()
    numbers = {"max_rel_err": logits["max_rel_err"], "top1_agreement": logits["top1_agreement"],
               "kl_mean": logits["kl_mean"], "bpb_torch": bpb_t, "bpb_gguf": bpb_g, "dbpb_rel": rel}
    nan_numbers = [k for k, v in numbers.items() if not np.isfinite(v)]
    checks = {"tokenization": bool(tokenization["equal"]), "chat": bool(chat["equal"]),
              "finite": not nonfinite["torch"] and not nonfinite["gguf"] and not nan_numbers}
    if quant == "f32":
        checks[f"logits_max_rel_err<={F32_MAX_REL_ERR:g}"] = bool(logits["ok"])
    passed = all(checks.values())
    summary = _summary(quant, passed, checks, logits, quality, nonfinite, nan_numbers)
    return {"file": str(path), "quant": quant, "passed": passed, "checks": checks, "summary": summary,
            "nonfinite": {**nonfinite, "numbers": nan_numbers}, "tokenization": tokenization,
            "logits": logits, "quality": quality, "chat": chat}


def _summary(quant: str, passed: bool, checks: dict[str, bool], logits: dict[str, Any], quality: dict[str, Any],
             nonfinite: dict[str, int], nan_numbers: list[str]) -> str:
    """The one-line verdict; a non-finite result says which side produced it."""
    line = (f"{quant}: logits max rel err {logits['max_rel_err']:.2e}, top-1 {logits['top1_agreement']:.3f}, "
            f"bpb {quality['bpb_torch']:.4f} -> {quality['bpb_gguf']:.4f}")
    if passed:
        return line
    why = [k for k, ok in checks.items() if not ok]
    if not checks["finite"]:
        sides = [f"{side} logits non-finite ({nonfinite[side]} of {nonfinite['values']} values)"
                 for side in ("torch", "gguf") if nonfinite[side]]
        if nonfinite["torch"]:
            sides.append("the checkpoint itself yields NaN/inf: its weights are corrupt or diverged")
        elif not sides:
            sides = [f"NaN in {', '.join(nan_numbers)}"]
        why[why.index("finite")] = "finite: " + "; ".join(sides)
    return f"{line}; FAILED: {', '.join(why)}"


def report_markdown(r: dict[str, Any]) -> str:
    t, lg, q, c, nf = r["tokenization"], r["logits"], r["quality"], r["chat"], r["nonfinite"]
    ex = r.get("export", {})
    ok = lambda b: "—" if b is None else ("✅" if b else "❌")  # noqa: E731
    thr = f" (≤ {lg['threshold']:.0e})" if lg["threshold"] else ""
    tgt = f", target ≤ {100 * q['target']:.0f} %" if q["target"] else ""
    lines = [
        f"# GGUF verification: `{Path(r['file']).name}` ({r['quant']})",
        "",
        f"**{'PASSED' if r['passed'] else 'FAILED'}** — oracle: llama-cpp-python, reference: torch (f32).",
        "",
        f"Summary: {r['summary']}",
        "",
        "| check | result | |",
        "|---|---|---|",
        f"| tokenization | {t['samples']} samples, {t['ids']} ids, BOS added: {t['adds_bos']} | {ok(t['equal'])} |",
        f"| logits max rel. error | {lg['max_rel_err']:.2e} over {lg['positions']} positions{thr} | {ok(lg['ok'])} |",
        f"| top-1 agreement | {lg['top1_agreement']:.4f} | |",
        f"| KL(torch‖gguf) mean | {lg['kl_mean']:.2e} nats/position | |",
        f"| bits per byte torch → gguf | {q['bpb_torch']:.4f} → {q['bpb_gguf']:.4f} "
        f"(Δ {100 * q['dbpb_rel']:+.3f} %{tgt}) on {q['bytes']} bytes | {ok(q['target_met'])} |",
        (f"| chat prompt ids | skipped: {c['skipped']} | — |" if c.get("skipped") else
         f"| chat prompt ids ({c['chat_format']}) | {c['prompt_tokens']} ids | {ok(c['equal'])} |"),
        f"| finite | non-finite logits: torch {nf['torch']}, gguf {nf['gguf']} of {nf['values']}; "
        f"NaN numbers: {', '.join(nf['numbers']) or 'none'} | {ok(r['checks']['finite'])} |",
    ]
    if ex:
        lines += ["", f"File: {ex['size_bytes']:,} bytes; tensor types: "
                  + ", ".join(f"{k} × {v}" for k, v in sorted(ex["tensor_types"].items()))
                  + f"; Q8_0/Q4_0 blocks by {ex['block_quantizer']}."]
        if ex["fallbacks"]:
            lines += ["", "Fallbacks (rows too narrow for the type):", ""] + [f"- {f}" for f in ex["fallbacks"]]
    if t["mismatches"]:
        lines += ["", "Tokenization mismatches:", ""] + [f"- `{m}`" for m in t["mismatches"]]
    return "\n".join(lines) + "\n"


def report_paths(gguf_path: str | Path) -> list[Path]:
    """Where the report of ``gguf_path`` lives: ``<stem>.verify.md`` and ``<stem>.verify.json`` beside it."""
    p = Path(gguf_path)
    return [p.with_suffix(".verify.md"), p.with_suffix(".verify.json")]


def write_report(report: dict[str, Any], gguf_path: str | Path) -> list[Path]:
    """``<stem>.verify.md`` and ``<stem>.verify.json`` beside the GGUF (atomic)."""
    md, js = report_paths(gguf_path)
    write_text(md, report_markdown(report))
    write_json(js, report)
    return [md, js]
