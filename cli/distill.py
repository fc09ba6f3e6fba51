"""``vnmini distill`` and ``vnmini teacher cache / generate``: a small student learns from a big teacher.

Training flags are those of ``vnmini train`` (TrainConfig; ``--config`` TOML, flags
win), so resume, eval, torchrun and metrics work the same way::

    vnmini distill --teacher runs/mini/final --student-preset micro --data shards/ --out runs/kd
    vnmini teacher cache --teacher runs/mini/final --data shards/ -k 32 --out cache/
    vnmini distill --teacher-cache cache/ --student-preset micro --data shards/ --out runs/kd-cache
    vnmini teacher generate --teacher big.gguf --prompts prompts.txt --out teacher.jsonl
    vnmini distill --teacher-text teacher.jsonl --tokenizer tok/ --student-preset micro --out runs/seqkd
"""

from __future__ import annotations

from pathlib import Path

import typer

from vnmini.cli.train import _overrides, _print_summary, cfg_opt
from vnmini.runtime.sampling import DEFAULTS
from vnmini.training import recipes

_O = typer.Option

teacher_app = typer.Typer(help="Teacher-side work for distillation: logit caches and generated text.",
                          no_args_is_help=True)


def distill(
    teacher: Path = _O(None, "--teacher", "-T",
                       help="Online logits: teacher checkpoint folder (vnmini or HF Llama/Mistral/Qwen2) or a .gguf; a "
                            "bigger vocabulary needs a student tokenizer adopted from it (`vnmini tokenizer adopt`)."),
    teacher_vocab: str = _O("full", "--teacher-vocab",
                            help="Adopted vocabulary: full (the teacher's whole softmax gathered onto the student's "
                                 "ids, exact) or mapped (its output cut to the student's rows: faster, renormalized)."),
    teacher_top_k: int = _O(64, "--teacher-top-k",
                            help="Adopted vocabulary: teacher ids per position in the sparse KL (+ leftover bucket)."),
    teacher_cache: Path = _O(None, "--teacher-cache", help="Offline: a cache folder from `vnmini teacher cache`."),
    teacher_text: Path = _O(None, "--teacher-text", help="Sequence-level: JSONL from `vnmini teacher generate`."),
    teacher_device: str = _O(None, "--teacher-device", help="Device of an online teacher (default: the student's)."),
    alpha: float = _O(recipes.KD_ALPHA, "--alpha",
                      help="loss = alpha·KD + (1 − alpha)·CE (default: the measured recipe, vnmini.training.recipes)."),
    kd: str = _O("forward", "--kd", help="Divergence: forward (KL(p‖q)), reverse (KL(q‖p)) or skew (DistiLLM)."),
    temperature: float = _O(None, "--temperature",
                            help="Softmax temperature τ (loss × τ²). (default: 1, or the cache's)"),
    skew_lambda: float = _O(0.1, "--skew-lambda", help="Skew KL mixing λ: KL(p ‖ λp + (1 − λ)q)."),
    data: Path = _O(None, "--data", "-d", help="Token shard folder (the teacher's tokenizer)."),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields (flags override it)."),
    out: Path = cfg_opt("out", "-o"),
    preset: str = cfg_opt("preset", "--preset", "-p", flag="--student-preset", note="The student's shape."),
    tokenizer: Path = cfg_opt("tokenizer", "-t"),
    init_from: Path = _O(None, "--init-from",
                         help="Start the student from this checkpoint (required for chat teacher text)."),
    init_embeddings: Path = cfg_opt("init_embeddings"),
    seq_len: int = cfg_opt("seq_len", note="With --teacher-cache: the cache's own."),
    micro_batch: int = cfg_opt("micro_batch"),
    global_batch_tokens: int = cfg_opt("global_batch_tokens"),
    max_steps: int = cfg_opt("max_steps"),
    max_minutes: float = cfg_opt("max_minutes"),
    max_epochs: float = cfg_opt("max_epochs"),
    lr: float = cfg_opt("lr"),
    warmup_steps: int = cfg_opt("warmup_steps"),
    schedule: str = cfg_opt("schedule"),
    decay_fraction: float = cfg_opt("decay_fraction"),
    min_lr_ratio: float = cfg_opt("min_lr_ratio"),
    weight_decay: float = cfg_opt("weight_decay"),
    dropout: float = cfg_opt("dropout"),
    eval_every: int = cfg_opt("eval_every"),
    eval_tokens: int = cfg_opt("eval_tokens"),
    sample_tokens: int = cfg_opt("sample_tokens"),
    save_every: int = cfg_opt("save_every"),
    resume: bool = cfg_opt("resume"),
    seed: int = cfg_opt("seed"),
    device: str = cfg_opt("device", note="The student's device."),
    dtype: str = cfg_opt("dtype"),
    compile: bool = cfg_opt("compile"),
    kernels: str = cfg_opt("kernels"),
    fsdp: bool = cfg_opt("fsdp"),
    threads: int = cfg_opt("threads"),
    progress: bool = cfg_opt("progress"),
) -> None:
    """Train a student from a teacher: online logits, an offline cache, or teacher text.

    Example: vnmini distill --teacher runs/mini/final --student-preset micro --data shards/ --alpha 0.5 --kd skew
    """
    from vnmini.training.distill import distill as run

    kd_args = ("teacher", "teacher_cache", "teacher_text", "teacher_device", "alpha", "kd", "temperature",
               "skew_lambda", "teacher_vocab", "teacher_top_k")
    values = {k: v for k, v in locals().items() if k not in ("config", "run", "kd_args")}
    kw = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k in kd_args}
    ov = _overrides({k: v for k, v in values.items() if k not in kd_args})
    s = run(config, **kw, **ov)
    _print_summary(s)
    d = s.get("distill", {})
    if d.get("mode") in ("online", "cache"):
        typer.echo(f"distilled ({d['mode']}): alpha {d['alpha']}, {d['kd']} KL, temperature {d['temperature']}"
                   + (f", k {d['k']}" if "k" in d else ""))


@teacher_app.command("cache")
def cache(
    teacher: Path = _O(..., "--teacher", "-T",
                       help="Teacher checkpoint folder or .gguf: the shards' tokenizer, or a bigger one the shards' "
                            "was adopted from (`vnmini tokenizer adopt`)."),
    data: Path = _O(..., "--data", "-d", help="Token shard folder the student will train on."),
    teacher_vocab: str = _O("full", "--teacher-vocab",
                            help="Adopted vocabulary: full (whole softmax gathered, exact) or mapped (output rows cut "
                                 "to the student's: faster, renormalized)."),
    tokenizer: Path = _O(None, "--tokenizer", "-t", help="The student's tokenizer (default: the shards')."),
    out: Path = _O(Path("teacher_cache"), "--out", "-o", help="Cache folder (manifest.json + part_*.safetensors)."),
    k: int = _O(32, "-k", "--top-k", help="Teacher tokens kept per position (plus the leftover mass)."),
    seq_len: int = _O(256, "--seq-len", help="Window length; the student must train with the same --seq-len."),
    temperature: float = _O(1.0, "--temperature", help="Temperature of the stored log-probs (the student's KD τ)."),
    batch_size: int = _O(8, "--batch-size", help="Windows per teacher forward."),
    windows_per_part: int = _O(1024, "--windows-per-part", help="Windows per safetensors part (the unit of resume)."),
    split: str = _O("train", "--split", help="Shard split to cache."),
    max_windows: int = _O(None, "--max-windows",
                          help="Cache only the first N windows (the student still trains on all: KD on these, "
                               "CE on the rest); a rerun with a bigger N extends the cache."),
    device: str = _O("auto", "--device", "--teacher-device", help="auto, cpu, cuda or cuda:N (bf16 on CUDA)."),
    progress: bool = _O(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = _O(False, "--force", "-f", help="Replace a cache made with other settings (same settings resume)."),
) -> None:
    """Run the teacher once over the shards and store its top-k log-probs per position (resumable, torchrun).

    Example: vnmini teacher cache --teacher runs/mini/final --data shards/ -k 32 --out cache/
    """
    import os

    from vnmini.training.teacher_cache import write_teacher_cache

    m = write_teacher_cache(teacher, data, out, k=k, seq_len=seq_len, temperature=temperature, batch_size=batch_size,
                            windows_per_part=windows_per_part, split=split, device=device, max_windows=max_windows,
                            progress=progress, force=force, vocab_mode=teacher_vocab,
                            tokenizer=str(tokenizer) if tokenizer else None)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"wrote {out}: {m['windows']:,} windows × {m['seq_len']} = {m['positions']:,} positions, "
                   f"k {m['k']}, {m['bytes'] / 2**20:.1f} MiB ({m['bytes_per_token']:.1f} bytes/token) "
                   f"in {m['elapsed_s']:.0f} s")
        if "teacher_mass_outside_student_vocab" in m:
            typer.echo(f"teacher mass on tokens outside the student's vocabulary: "
                       f"{m['teacher_mass_outside_student_vocab']:.2%} (kept in the leftover bucket)")


@teacher_app.command("generate")
def generate(
    teacher: Path = _O(..., "--teacher", "-T", help="Any model vnmini opens: checkpoint, .gguf, ONNX folder."),
    prompts: Path = _O(..., "--prompts", help=".txt (one prompt per line) or .jsonl ({\"prompt\"} or {\"messages\"})."),
    out: Path = _O(Path("teacher.jsonl"), "--out", "-o", help="JSONL to write (resumes from OUT.partial)."),
    mode: str = _O("auto", "--mode", help="auto, complete (continue the prompt) or chat (answer it)."),
    system: str = _O(None, "--system", help="System message for --mode chat."),
    samples: int = _O(1, "--samples", help="Outputs per prompt."),
    max_new_tokens: int = _O(DEFAULTS.max_new_tokens, "--max-new-tokens", help="Tokens per output."),
    temperature: float = _O(DEFAULTS.temperature, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_k: int = _O(DEFAULTS.top_k, "--top-k", help="Top-k sampling."),
    top_p: float = _O(DEFAULTS.top_p, "--top-p", help="Nucleus sampling."),
    repetition_penalty: float = _O(DEFAULTS.repetition_penalty, "--repetition-penalty",
                                   help="Penalty on repeated tokens."),
    seed: int = _O(0, "--seed", help="Output i is drawn with seed + i."),
    backend: str = _O(None, "--backend", help="torch, gguf, onnx or llama.cpp (default: from the path)."),
    device: str = _O("cpu", "--device", help="Device for a torch teacher."),
    threads: int = _O(None, "--threads", help="CPU threads."),
    progress: bool = _O(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = _O(False, "--force", "-f", help="Replace an existing output file."),
) -> None:
    """Write the teacher's continuations or chat answers (JSONL) for sequence-level distillation.

    Example: vnmini teacher generate --teacher runs/mini/final --prompts prompts.txt --out teacher.jsonl
    """
    from vnmini.training.teacher_generate import teacher_generate

    s = teacher_generate(teacher, prompts, out, mode=mode, system=system, samples=samples,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed, backend=backend, device=device,
                         threads=threads, progress=progress, force=force)
    typer.echo(f"wrote {s['out']}: {s['records']} records ({s['backend']}, {s['elapsed_s']:.0f} s"
               + (f", resumed at {s['resumed_at']}" if s["resumed_at"] else "") + ")")


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
    app.add_typer(teacher_app, name="teacher")
