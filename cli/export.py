"""``vnmini export gguf`` and ``vnmini export onnx``: a checkpoint -> a file another runtime
opens, quantized and verified (library calls: :func:`vnmini.export.to_gguf`,
:func:`vnmini.export.to_onnx`; both return an ``ExportResult``).

    vnmini export gguf runs/quickstart/chat -o chat-q4_k_m.gguf --quant q4_k_m
    vnmini export onnx runs/tiny/final -o out/onnx-int8 --quant int8
"""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(
    help="Export a checkpoint for llama.cpp (GGUF) or ONNX Runtime, quantized and verified.",
    no_args_is_help=True,
)


@export_app.command("gguf")
def export_gguf(
    checkpoint: Path = typer.Argument(..., help="A vnmini / Hugging Face Llama checkpoint folder (with tokenizer)."),
    output: Path = typer.Option(..., "--output", "-o", help="The .gguf file to write."),
    quant: str = typer.Option("q8_0", "--quant", "-q",
                              help="f32, f16, bf16, q8_0, q4_0 (written directly) or q4_k_m, q5_k_m, q6_k "
                                   "(llama.cpp's quantizer)."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Check tokenization, logits, bits per byte and chat against torch "
                                     "through llama-cpp-python; write <name>.verify.md/.json beside the file."),
    verify_text: Path | None = typer.Option(None, "--verify-text",
                                            help="Held-out UTF-8 text for the bits-per-byte check "
                                                 "(default: vnmini's bundled Vietnamese sample)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing .gguf (never anything else)."),
    name: str | None = typer.Option(None, "--name", help="general.name in the file (default: the folder name)."),
    threads: int | None = typer.Option(None, "--threads", help="Threads for llama.cpp (quantizer and verify)."),
    keep_failed: bool = typer.Option(False, "--keep-failed",
                                     help="If verification fails, keep the file as <name>.failed.gguf (with its "
                                          "report) for inspection; it never gets the -o name."),
    ollama: bool = typer.Option(False, "--ollama",
                                help="Also write <name>.Modelfile for Ollama: FROM the GGUF, the chat template as a "
                                     "Go TEMPLATE, stop tokens, a default SYSTEM, num_ctx."),
) -> None:
    """Write a GGUF for llama.cpp with the tokenizer and chat template inside.

    Example: vnmini export gguf runs/quickstart/chat -o chat-q8_0.gguf --quant q8_0 --ollama
    """
    from vnmini.export.gguf_writer import to_gguf

    if ollama:  # refuse an untranslatable template or an existing Modelfile before the long export
        from vnmini.export.ollama import preflight

        preflight(checkpoint, output, force=force)
    res = to_gguf(checkpoint, output, quant=quant, force=force, verify=verify, verify_text=verify_text,
                  name=name, threads=threads, progress=True, keep_failed=keep_failed)
    types = ", ".join(f"{k} × {v}" for k, v in sorted(res.tensor_types.items()))
    typer.echo(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {quant}; {types})")
    if res.fallbacks:
        typer.echo(f"fallbacks: {len(res.fallbacks)} tensors in a fallback type, rows too narrow "
                   f"for {quant} (listed in the report)")
    if res.verify is not None:
        v = res.verify
        q, lg = v["quality"], v["logits"]
        typer.echo(
            f"verify: {'PASSED' if v['passed'] else 'FAILED'} — "
            f"tokenization {'ok' if v['tokenization']['equal'] else 'DIFFERS'}, "
            f"chat {'skipped' if v['chat'].get('skipped') else 'ok' if v['chat']['equal'] else 'DIFFERS'}, "
            f"logits max rel err {lg['max_rel_err']:.1e}, "
            f"top-1 {lg['top1_agreement']:.3f}, bpb {q['bpb_torch']:.4f} → {q['bpb_gguf']:.4f} "
            f"({100 * q['dbpb_rel']:+.2f} %)"
        )
        typer.echo(f"report: {res.report_paths[0]}")
    if ollama:
        from vnmini.export.ollama import write_modelfile

        mf = write_modelfile(res.path, force=force)
        typer.echo(f"wrote {mf} (Ollama: cd {mf.parent} && ollama create {res.path.stem} -f {mf.name})")


@export_app.command("onnx")
def export_onnx(
    checkpoint: Path = typer.Argument(..., help="A vnmini / Hugging Face Llama checkpoint folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.onnx + config, tokenizer, report)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, or fp16 (for GPU execution providers)."),
    quant: str = typer.Option("none", "--quant", "-q", help="none, int8 (quantize_dynamic) or int4 (MatMulNBits)."),
    block_size: int = typer.Option(32, "--block-size", help="int4: weights per scale (power of two >= 16)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check against torch; write verify.json/.md."),
    verify_text: Path | None = typer.Option(None, "--verify-text", "--text",
                                            help="Held-out UTF-8 text for the bits-per-byte check "
                                                 "(default: vnmini's bundled Vietnamese sample)."),
    force: bool = typer.Option(False, "--force", "-f",
                               help="Replace an existing ONNX export folder (never anything else)."),
    engine: str = typer.Option("torch", "--engine", help="torch (ours), or genai (onnxruntime-genai's builder)."),
    external_data: bool | None = typer.Option(None, "--external-data/--no-external-data",
                                              help="Weights in model.onnx.data (default: only over 2 GB)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset for the exporter."),
) -> None:
    """Export to ONNX with a KV cache, optionally quantized, and verify against torch.

    Example: vnmini export onnx runs/tiny/final -o out/onnx-int4 --quant int4 --block-size 32
    """
    from vnmini.export.onnx_export import to_onnx

    res = to_onnx(checkpoint, out, dtype=dtype, quant=quant, block_size=block_size, verify=verify,
                  force=force, opset=opset, external_data=external_data, engine=engine, verify_text=verify_text)
    typer.echo(f"wrote {res.path} ({res.size_bytes / 1e6:.1f} MB, {dtype}, quant {quant})")
    if res.verify is not None:
        typer.echo("verify: " + res.verify["summary"])
        typer.echo(f"report: {res.report_paths[0]}")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
