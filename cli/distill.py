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
from vnmini.cli.train import _overrides, _print_summary

_O = typer.Option

teacher_app = typer.Typer(help="Teacher-side work for distillation: logit caches and generated text.",
                          no_args_is_help=True)


def distill(
    teacher: Path = _O(None, "--teacher", "-T", help="Online logits: teacher checkpoint folder (vnmini or HF Llama/Mistral/Qwen2)."),
    teacher_cache: Path = _O(None, "--teacher-cache", help="Offline: a cache folder from `vnmini teacher cache`."),
    teacher_text: Path = _O(None, "--teacher-text", help="Sequence-level: JSONL from `vnmini teacher generate`."),
    teacher_device: str = _O(None, "--teacher-device", help="Device of an online teacher (default: the student's)."),
    alpha: float = _O(0.5, "--alpha", help="loss = alpha·KD + (1 − alpha)·CE."),
    kd: str = _O("forward", "--kd", help="Divergence: forward (KL(p‖q)), reverse (KL(q‖p)) or skew (DistiLLM)."),
    temperature: float = _O(None, "--temperature", help="Softmax temperature τ (loss × τ²). [1, or the cache's]"),
    skew_lambda: float = _O(0.1, "--skew-lambda", help="Skew KL mixing λ: KL(p ‖ λp + (1 − λ)q)."),
    data: Path = _O(None, "--data", "-d", help="Token shard folder (the teacher's tokenizer)."),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields (flags override it)."),
    out: Path = _O(None, "--out", "-o", help="Run folder (checkpoints, metrics.jsonl, loss.png). [runs/train]"),
    preset: str = _O(None, "--student-preset", "--preset", "-p", help="Student shape: micro, tiny, mini, ... [tiny]"),
    tokenizer: Path = _O(None, "--tokenizer", "-t", help="Tokenizer folder/json (default: the shards' own)."),
    init_from: Path = _O(None, "--init-from", help="Start the student from this checkpoint (required for chat teacher text)."),
    seq_len: int = _O(None, "--seq-len", help="Tokens per sequence (a cache's own with --teacher-cache). [256]"),
    micro_batch: int = _O(None, "--micro-batch", help="Sequences per process per forward. [8]"),
    global_batch_tokens: int = _O(None, "--global-batch-tokens", help="Tokens per optimizer step. [16384]"),
    max_steps: int = _O(None, "--max-steps", help="Optimizer steps. [1000]"),
    max_minutes: float = _O(None, "--max-minutes", help="Stop (with a final checkpoint) after this wall time."),
    lr: float = _O(None, "--lr", help="Peak learning rate. [3e-3]"),
    warmup_steps: int = _O(None, "--warmup-steps", help="Linear warmup steps. [50]"),
    schedule: str = _O(None, "--schedule", help="cosine, wsd or constant. [cosine]"),
    weight_decay: float = _O(None, "--weight-decay", help="AdamW decay on matrices. [0.1]"),
    eval_every: int = _O(None, "--eval-every", help="Evaluate (loss, bits per byte) every N steps. [100]"),
    eval_tokens: int = _O(None, "--eval-tokens", help="Validation tokens per evaluation. [65536]"),
    sample_tokens: int = _O(None, "--sample-tokens", help="Tokens to sample at each eval (0 = none). [40]"),
    save_every: int = _O(None, "--save-every", help="Checkpoint every N steps (0 = only the final). [500]"),
    resume: bool = _O(None, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
    seed: int = _O(None, "--seed", help="Seeds the init and the data order. [1337]"),
    device: str = _O(None, "--device", help="Student device: auto, cpu, cuda or cuda:N. [auto]"),
    dtype: str = _O(None, "--dtype", help="auto (bf16 autocast on CUDA), float32 or bfloat16. [auto]"),
    compile: bool = _O(None, "--compile/--no-compile", help="torch.compile the student."),
    kernels: str = _O(None, "--kernels", help="Loss kernels (CE and KD): auto, numba or torch. [auto]"),
    fsdp: bool = _O(None, "--fsdp/--no-fsdp", help="Shard the student with FSDP2 under torchrun."),
    threads: int = _O(None, "--threads", help="torch CPU threads."),
    progress: bool = _O(None, "--progress/--no-progress", help="Show the progress bar. [on]"),
) -> None:
    """Train a student from a teacher: online logits, an offline cache, or teacher text.

    Example: vnmini distill --teacher runs/mini/final --student-preset micro --data shards/ --alpha 0.5 --kd skew
    """
    from vnmini.distill import distill as run

    kd_args = ("teacher", "teacher_cache", "teacher_text", "teacher_device", "alpha", "kd", "temperature", "skew_lambda")
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
    teacher: Path = _O(..., "--teacher", "-T", help="Teacher checkpoint folder (same tokenizer as the shards)."),
    data: Path = _O(..., "--data", "-d", help="Token shard folder the student will train on."),
    out: Path = _O(Path("teacher_cache"), "--out", "-o", help="Cache folder (manifest.json + part_*.safetensors)."),
    k: int = _O(32, "-k", "--top-k", help="Teacher tokens kept per position (plus the leftover mass)."),
    seq_len: int = _O(256, "--seq-len", help="Window length; the student must train with the same --seq-len."),
    temperature: float = _O(1.0, "--temperature", help="Temperature of the stored log-probs (the student's KD τ)."),
    batch_size: int = _O(8, "--batch-size", help="Windows per teacher forward."),
    windows_per_part: int = _O(1024, "--windows-per-part", help="Windows per safetensors part (the unit of resume)."),
    split: str = _O("train", "--split", help="Shard split to cache."),
    max_windows: int = _O(None, "--max-windows", help="Cache only the first N windows (the student then draws from those)."),
    device: str = _O("auto", "--device", "--teacher-device", help="auto, cpu, cuda or cuda:N (bf16 on CUDA)."),
    progress: bool = _O(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run the teacher once over the shards and store its top-k log-probs per position (resumable, torchrun).

    Example: vnmini teacher cache --teacher runs/mini/final --data shards/ -k 32 --out cache/
    """
    import os

    from vnmini.teacher_cache import write_teacher_cache

    m = write_teacher_cache(teacher, data, out, k=k, seq_len=seq_len, temperature=temperature, batch_size=batch_size,
                            windows_per_part=windows_per_part, split=split, device=device, max_windows=max_windows,
                            progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"wrote {out}: {m['windows']:,} windows × {m['seq_len']} = {m['positions']:,} positions, k {m['k']}, "
                   f"{m['bytes'] / 2**20:.1f} MiB ({m['bytes_per_token']:.1f} bytes/token) in {m['elapsed_s']:.0f} s")


@teacher_app.command("generate")
def generate(
    teacher: Path = _O(..., "--teacher", "-T", help="Any model vnmini opens: checkpoint, .gguf, ONNX folder."),
    prompts: Path = _O(..., "--prompts", help=".txt (one prompt per line) or .jsonl ({\"prompt\"} or {\"messages\"})."),
    out: Path = _O(Path("teacher.jsonl"), "--out", "-o", help="JSONL to write (resumes from OUT.partial)."),
    mode: str = _O("auto", "--mode", help="auto, complete (continue the prompt) or chat (answer it)."),
    system: str = _O(None, "--system", help="System message for --mode chat."),
    samples: int = _O(1, "--samples", help="Outputs per prompt."),
    max_new_tokens: int = _O(256, "--max-new-tokens", help="Tokens per output."),
    temperature: float = _O(0.7, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_k: int = _O(50, "--top-k", help="Top-k sampling."),
    top_p: float = _O(0.9, "--top-p", help="Nucleus sampling."),
    repetition_penalty: float = _O(1.1, "--repetition-penalty", help="Penalty on repeated tokens."),
    seed: int = _O(0, "--seed", help="Output i is drawn with seed + i."),
    backend: str = _O(None, "--backend", help="torch, gguf, onnx or llama.cpp (default: from the path)."),
    device: str = _O("cpu", "--device", help="Device for a torch teacher."),
    threads: int = _O(None, "--threads", help="CPU threads."),
    progress: bool = _O(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write the teacher's continuations or chat answers (JSONL) for sequence-level distillation.

    Example: vnmini teacher generate --teacher runs/mini/final --prompts prompts.txt --out teacher.jsonl
    """
    from vnmini.teacher_generate import teacher_generate

    s = teacher_generate(teacher, prompts, out, mode=mode, system=system, samples=samples,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed, backend=backend, device=device,
                         threads=threads, progress=progress)
    typer.echo(f"wrote {s['out']}: {s['records']} records ({s['backend']}, {s['elapsed_s']:.0f} s"
               + (f", resumed at {s['resumed_at']}" if s["resumed_at"] else "") + ")")


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
    app.add_typer(teacher_app, name="teacher")
