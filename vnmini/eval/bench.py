"""``vnmini bench``: speed, memory and size of models, side by side, against this machine's limit.

    res = vnmini.bench(["ckpt/", "m.q8_0.gguf", "m.q4_0.gguf", "onnx_int4/"], out_dir="bench_out")
    print(res["markdown"])       # also bench_out/bench.md, bench.json, bench.png

Per model, in a fresh subprocess (:mod:`vnmini.eval.bench_child`, so peak RSS is the
model's own): load with :func:`vnmini.load`, warm up, then ``repeats`` runs of a
P-token prefill and D greedy decode steps; the median run gives prefill and
decode tokens/s and time to first token.

Memory-bandwidth ceiling. Decoding one token reads every weight matrix once,
so on a CPU decode speed is bounded by memory bandwidth / bytes read per token.
:func:`measure_bandwidth` reads a 512 MiB array (≫ any L3) with an integer XOR
reduction — a streaming read that does almost no arithmetic, so it runs at the
memory's speed rather than the ALU's — using 1 and then all threads, and keeps
the faster (median of several repeats). It also reports a copy (read + write)
for reference. Bytes read per token (:func:`weight_bytes_per_token`) are the
weight file's tensor bytes, minus the input embedding table when the model has
a separate output matrix (an untied embedding is only gathered: one row per
token). This ignores the KV cache (small at bench prompt lengths), activations
and cache effects for models that fit in L3, so the share can exceed 100% for
tiny models; it is meaningful for models much larger than the CPU caches.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vnmini.atomic import atomic_dir, atomic_path, write_json, write_text
from vnmini.errors import VnminiError
from vnmini.outputs import check_output


# -------------------------------------------------------------- bandwidth
def measure_bandwidth(size_mib: int = 512, repeats: int = 5, threads: int | None = None) -> dict[str, float]:
    """Measured memory bandwidth in GB/s (1e9 bytes/s): ``read`` (the ceiling) and ``copy``."""
    threads = threads or os.cpu_count() or 1
    n = size_mib * 2**20 // 8
    a = np.arange(n, dtype=np.int64)  # touch every page before timing
    b = np.empty_like(a)

    def timed(fn) -> float:
        fn()  # warm-up
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    chunks = np.array_split(a, threads)
    out_chunks = np.array_split(b, threads)
    with ThreadPoolExecutor(threads) as ex:  # numpy releases the GIL inside large reductions and copies
        read_1 = a.nbytes / timed(lambda: np.bitwise_xor.reduce(a)) / 1e9
        read_n = a.nbytes / timed(lambda: list(ex.map(np.bitwise_xor.reduce, chunks))) / 1e9
        copy_n = 2 * a.nbytes / timed(
            lambda: list(ex.map(lambda i: np.copyto(out_chunks[i], chunks[i]), range(threads)))) / 1e9
    results = {"read_gbps": max(read_1, read_n), "read_1thread_gbps": read_1, f"read_{threads}threads_gbps": read_n,
               "copy_gbps": copy_n, "array_mib": size_mib, "threads": threads}
    return results  # the arrays are freed when this frame goes


# ------------------------------------------------------------- file sizes
def model_files(path: str | Path) -> list[Path]:
    """The weight files of a model: the .gguf, the ONNX graph + external data, or the safetensors."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".onnx":
            path = path.parent
        else:
            return [path]
    if not path.is_dir():
        raise VnminiError(f"{path}: no such file or folder; pass a checkpoint folder, a .gguf file or an ONNX folder.")
    if (path / "model.onnx").is_file():
        return sorted(p for p in path.iterdir()
                      if p.is_file() and (p.suffix in (".onnx", ".data", ".onnx_data")
                                          or p.name.endswith(".onnx.data")))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise VnminiError(f"{path}: no model.onnx and no *.safetensors; is this a model folder?")
    return files


def file_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in model_files(path))


def _gguf_tensor_bytes(path: Path) -> tuple[int, int, bool]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    return sum(sizes.values()), sizes.get("token_embd.weight", 0), "output.weight" in sizes


def _safetensors_bytes(files: list[Path]) -> tuple[int, int, bool]:
    total, embed, has_head = 0, 0, False
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            nbytes = info["data_offsets"][1] - info["data_offsets"][0]
            total += nbytes
            if name.endswith("embed_tokens.weight"):
                embed = nbytes
            if name.endswith("lm_head.weight"):
                has_head = True
    return total, embed, has_head


def _onnx_bytes(folder: Path) -> tuple[int, int, bool]:
    """(tensor bytes, bytes only ever gathered, whether such a table exists), from the graph itself.

    An initializer whose every consumer is a Gather (the token embedding when the
    output matrix is a separate initializer, as the exporters write it) costs one
    row per token, not its whole size.
    """
    import onnx

    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in m.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total, gathered = 0, 0
    for init in m.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        nbytes = int(ext["length"]) if "length" in ext else len(init.raw_data) or (
            int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize)
        total += nbytes
        if consumers.get(init.name) == {"Gather"} and len(init.dims) == 2:
            gathered += nbytes
    return total, gathered, gathered > 0


def weight_bytes_per_token(path: str | Path) -> dict[str, int]:
    """Bytes of weights a decode step reads (see module docstring for the approximation)."""
    path = Path(path)
    files = model_files(path)
    if files[0].suffix == ".gguf":
        total, embed, untied = _gguf_tensor_bytes(files[0])
    elif any(f.suffix == ".onnx" for f in files):
        total, embed, untied = _onnx_bytes(files[0].parent)
    else:
        total, embed, untied = _safetensors_bytes(files)
    per_token = total - embed if untied else total
    return {"tensor_bytes": total, "embedding_bytes": embed, "untied_embedding": untied, "bytes_per_token": per_token}


def quant_label(path: str | Path) -> str:
    """A short label for tables: the GGUF file type, the ONNX folder name, or the checkpoint dtype."""
    path = Path(path)
    if path.suffix == ".gguf":
        try:
            from gguf import GGUFReader, LlamaFileType

            f = GGUFReader(str(path)).get_field("general.file_type")
            if f is not None:
                return LlamaFileType(int(f.contents())).name.removeprefix("MOSTLY_").lower()
        except Exception:  # an unknown file type is not worth failing a benchmark over
            pass
        return path.stem.rsplit(".", 1)[-1]
    if (path / "model.onnx").is_file():
        meta = path / "onnx_export.json"
        if meta.is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            return info.get("quant") if info.get("quant") not in (None, "none") else info.get("dtype", "fp32")
        return path.name
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return path.name


# ---------------------------------------------------------------- running
def run_child(spec: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
    """Measure one model in a fresh interpreter; returns the child's JSON."""
    env = dict(os.environ)
    if spec.get("threads"):
        env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    try:
        proc = subprocess.run([sys.executable, "-m", "vnmini.eval.bench_child", json.dumps(spec)], capture_output=True,
                              text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise VnminiError(f"{spec['model']}: the benchmark ran over {timeout:.0f} s; lower --prompt-tokens, "
                          "--decode-tokens or --repeats.") from e
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        res = json.loads(last)
    except json.JSONDecodeError:
        tail = (proc.stderr.strip().splitlines() or [f"no output, exit code {proc.returncode}"])[-1]
        raise VnminiError(f"{spec['model']}: the benchmark process failed ({tail[:200]}).") from None
    if "error" in res:
        raise VnminiError(res["error"])
    return res


def model_label(path: str | Path) -> str:
    """A short name for a table row: run folders' ``final``/``step_N`` get their run's name in front."""
    p = Path(path)
    if p.name == "final" or p.name.startswith("step_"):
        return f"{p.parent.name}/{p.name}"
    return p.name


def markdown_table(rows: list[dict[str, Any]], bandwidth: dict[str, float] | None) -> str:
    head = ["model", "backend", "quant", "file MB", "prefill tok/s", "decode tok/s", "TTFT ms", "peak RSS MB"]
    if bandwidth:
        head += ["ceiling tok/s", "share of ceiling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [model_label(r["model"]), r["backend"], r["quant"], f"{r['file_bytes'] / 1e6:.1f}",
                 f"{r['prefill_tok_s']:.1f}", f"{r['decode_tok_s']:.1f}", f"{r['ttft_ms']:.1f}",
                 f"{r['peak_rss_bytes'] / 1e6:.0f}"]
        if bandwidth:
            cells += [f"{r['ceiling_tok_s']:.1f}", f"{100 * r['share_of_ceiling']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if bandwidth:
        out += (f"\nMemory bandwidth (measured, {bandwidth['array_mib']} MiB streaming read, median): "
                f"{bandwidth['read_gbps']:.1f} GB/s (copy: {bandwidth['copy_gbps']:.1f} GB/s). "
                "Ceiling = bandwidth / weight bytes read per token.\n")
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart: prefill and decode tokens/s per model (and the decode ceiling), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{model_label(r['model'])}\n{r['backend']} {r['quant']}" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(rows)), 4.2))
    axes[0].bar(x, [r["prefill_tok_s"] for r in rows], color="tab:blue")
    axes[0].set_title("prefill tokens/s")
    axes[1].bar(x - 0.2, [r["decode_tok_s"] for r in rows], 0.4, color="tab:orange", label="measured")
    if all("ceiling_tok_s" in r for r in rows):
        axes[1].bar(x + 0.2, [r["ceiling_tok_s"] for r in rows], 0.4, color="tab:gray", label="bandwidth ceiling")
        axes[1].legend()
    axes[1].set_title("decode tokens/s")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def bench(
    models: list[str | Path],
    out_dir: str | Path | None = None,
    prompt_tokens: int = 64,
    decode_tokens: int = 64,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    bandwidth: bool = True,
    progress: bool = False,
    bandwidth_mib: int = 512,
    force: bool = False,
) -> dict[str, Any]:
    """Benchmark each model in its own process; returns rows, bandwidth and the markdown table.

    With ``out_dir``, writes ``bench.json``, ``bench.md`` and ``bench.png`` there (atomically);
    an existing results folder is replaced only with ``force``, anything else never.
    """
    if not models:
        raise VnminiError("vnmini bench: give at least one MODEL (checkpoint folder, .gguf or ONNX folder).")
    if out_dir is not None:
        check_output(out_dir, "bench", force)
    from vnmini.runtime.loader import detect_backend

    for m in models:
        detect_backend(m)  # fail fast, before minutes of benchmarking, on a bad path
    threads = threads or os.cpu_count() or 1
    rows = []
    from vnmini.progress import progress_bar

    with progress_bar("bench", len(models) + int(bandwidth), enabled=progress, transient=True) as bar:
        bw = measure_bandwidth(bandwidth_mib, threads=threads) if bandwidth else None
        if bandwidth:
            bar.advance()
        for m in models:
            spec = {"model": str(m), "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
                    "repeats": repeats, "warmup": warmup, "threads": threads}
            r = run_child(spec)
            r["quant"] = quant_label(m)
            r["file_bytes"] = file_size(m)
            r.update(weight_bytes_per_token(m))
            if bw:
                r["ceiling_tok_s"] = bw["read_gbps"] * 1e9 / r["bytes_per_token"]
                r["share_of_ceiling"] = r["decode_tok_s"] / r["ceiling_tok_s"]
            rows.append(r)
            bar.advance()
    md = markdown_table(rows, bw)
    result = {"rows": rows, "bandwidth": bw, "markdown": md,
              "settings": {"prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "repeats": repeats,
                           "warmup": warmup, "threads": threads}}
    if out_dir is not None:
        out = Path(out_dir)
        with atomic_dir(out) as tmp:  # one rename: a folder of the old run's and new run's files never exists
            write_json(tmp / "bench.json", {k: v for k, v in result.items() if k != "markdown"})
            write_text(tmp / "bench.md", md)
            plot(rows, tmp / "bench.png")
        result["files"] = [str(out / n) for n in ("bench.json", "bench.md", "bench.png")]
    return result
