"""``vnmini bench MODEL [MODEL ...]``: prefill/decode tokens/s, time to first token, peak RAM and
file size per model, next to this machine's measured memory-bandwidth ceiling. Thin wrapper
over :func:`vnmini.eval.bench.bench` (each model runs in its own process)."""

from __future__ import annotations

from pathlib import Path

import typer


def bench_cmd(
    models: list[Path] = typer.Argument(..., help="Checkpoint folders, .gguf files and/or ONNX folders."),
    out: Path = typer.Option(Path("bench_out"), "--out", "-o", help="Folder for bench.md, bench.json, bench.png."),
    prompt_tokens: int = typer.Option(64, "--prompt-tokens", "-p", help="Prompt length for prefill."),
    decode_tokens: int = typer.Option(64, "--decode-tokens", "-d", help="Greedy tokens to decode."),
    repeats: int = typer.Option(3, "--repeats", "-r", help="Timed runs per model (the median is reported)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs first."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for every backend (default: all cores)."),
    no_bandwidth: bool = typer.Option(False, "--no-bandwidth", help="Skip measuring the memory-bandwidth ceiling."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bench results folder."),
) -> None:
    """Benchmark models side by side; writes a markdown table, JSON and a PNG chart.

    Example: vnmini bench runs/q/chat runs/q/chat.q8_0.gguf runs/q/chat.q4_0.gguf -o bench_out
    """
    from vnmini.eval.bench import bench

    res = bench(models, out_dir=out, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, repeats=repeats,
                warmup=warmup, threads=threads, bandwidth=not no_bandwidth, progress=True, force=force)
    typer.echo(res["markdown"])
    typer.echo("wrote " + ", ".join(res["files"]))


def register(app: typer.Typer) -> None:
    app.command(name="bench")(bench_cmd)
