"""One model's speed and memory, measured in a fresh process (run by :mod:`vnmini.eval.bench`).

    python -m vnmini.eval.bench_child '{"model": "m.q4_0.gguf", "prompt_tokens": 64, "decode_tokens": 64,
                                   "repeats": 3, "warmup": 1, "threads": 2}'

Prints one JSON line on stdout (the last line): load time, prefill and decode
tokens/s and time to first token (median over ``repeats`` after ``warmup``
untimed runs), peak resident memory (VmHWM), backend and context length. A
fresh process per model keeps the peak-memory number honest: nothing another
model allocated is counted.

Each run: ``reset()`` the backend's KV cache, feed the P-token prompt in one
call (prefill; time to first token adds the argmax of its logits), then D
greedy steps of one token each (decode). The backend's ``_feed`` primitive is
used rather than ``generate`` so that an end-of-sequence token sampled by a
random model cannot cut the run short; it is the same call ``generate`` makes.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM on Linux, ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def prompt_ids(gen: Any, n: int) -> list[int]:
    """n token ids of real Vietnamese text (the shipped sample, repeated), BOS first; random ids without a tokenizer."""
    if gen.tokenizer is not None:
        from vnmini.assets import SAMPLE_TEXT, asset_text

        text = asset_text(SAMPLE_TEXT)
        ids = gen.tokenizer.encode(text, add_bos=True)
        while len(ids) < n:
            ids += ids[1:]
        return ids[:n]
    rng = np.random.default_rng(0)
    return rng.integers(3, gen.logits([0]).shape[-1], size=n).tolist()


def run_once(gen: Any, ids: list[int], decode_tokens: int) -> dict[str, float]:
    gen.reset()
    gen._cached = []  # keep the base class's prefix bookkeeping in step with the reset cache
    t0 = time.perf_counter()
    logits = gen._feed(ids)
    t1 = time.perf_counter()
    tok = int(np.argmax(logits))
    ttft = time.perf_counter() - t0
    t2 = time.perf_counter()
    for _ in range(decode_tokens):
        logits = gen._feed([tok])
        tok = int(np.argmax(logits))
    t3 = time.perf_counter()
    return {"prefill_s": t1 - t0, "ttft_s": ttft, "decode_s": t3 - t2}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from vnmini.errors import VnminiError
    from vnmini.runtime.loader import load

    p, d = int(spec.get("prompt_tokens", 64)), int(spec.get("decode_tokens", 64))
    repeats, warmup = int(spec.get("repeats", 3)), int(spec.get("warmup", 1))
    if p < 1 or d < 1 or repeats < 1 or warmup < 0:
        raise VnminiError("--prompt-tokens, --decode-tokens and --repeats must be >= 1, --warmup >= 0.")
    rss_before = peak_rss_bytes()
    t0 = time.perf_counter()
    gen = load(spec["model"], backend=spec.get("backend"), threads=spec.get("threads"))
    load_s = time.perf_counter() - t0
    if p + d > gen.context_length:
        raise VnminiError(
            f"{spec['model']}: --prompt-tokens {p} + --decode-tokens {d} exceed the model's context "
            f"({gen.context_length}); lower them."
        )
    ids = prompt_ids(gen, p)
    for _ in range(warmup):
        run_once(gen, ids, d)
    runs = [run_once(gen, ids, d) for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "model": str(spec["model"]),
        "backend": gen.backend,
        "context_length": gen.context_length,
        "threads": spec.get("threads"),
        "prompt_tokens": p,
        "decode_tokens": d,
        "repeats": repeats,
        "load_s": load_s,
        "prefill_tok_s": p / med["prefill_s"],
        "decode_tok_s": d / med["decode_s"],
        "ttft_ms": med["ttft_s"] * 1000,
        "runs": runs,
        "peak_rss_bytes": peak_rss_bytes(),
        "python_baseline_rss_bytes": rss_before,
    }


def main(argv: list[str] | None = None) -> int:
    from vnmini.errors import VnminiError

    argv = sys.argv[1:] if argv is None else argv
    try:
        spec = json.loads(argv[0])
        res = measure(spec)
    except VnminiError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
