"""``vnmini info`` and ``vnmini generate``: look inside a model, one-shot generation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vnmini.errors import VnminiError
from vnmini.runtime.sampling import DEFAULTS


def info(
    path: Path = typer.Argument(None, help="A checkpoint folder, .gguf file, ONNX folder or shard folder."),
    kernels: bool = typer.Option(False, "--kernels", help="Show which kernel versions are active and why."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """What a checkpoint / GGUF / ONNX folder / shard set holds.

    Example: vnmini info runs/quickstart/teacher
    """
    from vnmini.info import describe

    if kernels:
        from vnmini.kernels import kernel_info

        rows = kernel_info()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
        else:
            for r in rows:
                typer.echo(" | ".join(f"{k}={v}" for k, v in r.items()))
        if path is None:
            return
    if path is None:
        raise VnminiError("vnmini info: give a PATH (or --kernels).")
    d = describe(path)
    if as_json:
        typer.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        typer.echo(f"{k:<{width}}  {v}")


def generate(
    model: Path = typer.Argument(..., help="Checkpoint folder, .gguf file or ONNX folder."),
    prompt: str = typer.Argument(..., help="The prompt text (normalized before tokenizing)."),
    max_new_tokens: int = typer.Option(DEFAULTS.max_new_tokens, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(DEFAULTS.temperature, "--temperature", "-t", help="0 = greedy."),
    top_k: int = typer.Option(DEFAULTS.top_k, "--top-k"),
    top_p: float = typer.Option(DEFAULTS.top_p, "--top-p"),
    repetition_penalty: float = typer.Option(DEFAULTS.repetition_penalty, "--repetition-penalty"),
    stop: list[str] = typer.Option([], "--stop", help="Stop at this string (repeatable)."),
    seed: int | None = typer.Option(None, "--seed"),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt as a user turn with the chat template."),
    backend: str | None = typer.Option(None, "--backend", help="torch, gguf or onnx (default: from the path)."),
    threads: int | None = typer.Option(None, "--threads"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, ids, timings)."),
) -> None:
    """One-shot generation, streamed to stdout (scriptable with --json).

    Example: vnmini generate runs/quickstart/chat "Điều 1." -n 40 -t 0
    """
    import vnmini

    gen = vnmini.load(model, backend=backend, threads=threads)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
              repetition_penalty=repetition_penalty, stop=stop, seed=seed)
    events = gen.chat([{"role": "user", "content": prompt}], stream=True, **kw) if chat else gen.generate(prompt, **kw)
    if as_json:
        text = "".join(ev.text for ev in events)
        stats = dict(gen.last_stats)
        typer.echo(json.dumps({"text": text, **stats}, ensure_ascii=False))
        return
    for ev in events:
        typer.echo(ev.text, nl=False)
    typer.echo("")


def register(app: typer.Typer) -> None:
    app.command()(info)
    app.command()(generate)
