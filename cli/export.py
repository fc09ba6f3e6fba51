"""``vnmini export``: the export verb group; this module owns ``vnmini export gguf``.

:data:`export_app` is the sub-Typer every export engine adds its command to
(``cli/export_onnx.py`` imports it and adds ``onnx``); :func:`register` mounts
it on the root app as ``export`` and imports the sibling engine modules so
their commands exist even if only this module is listed in COMMAND_MODULES.

    vnmini export gguf runs/quickstart/chat -o chat-q4_k_m.gguf --quant q4_k_m
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import typer

export_app = typer.Typer(
    help="Export a checkpoint for llama.cpp (GGUF) or ONNX Runtime, quantized and verified.",
    no_args_is_help=True,
)

# Modules that add commands to export_app when imported (missing ones are skipped).
ENGINE_MODULES = ["export_onnx"]


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
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    name: str | None = typer.Option(None, "--name", help="general.name in the file (default: the folder name)."),
    threads: int | None = typer.Option(None, "--threads", help="Threads for llama.cpp (quantizer and verify)."),
) -> None:
    """Write a GGUF for llama.cpp with the tokenizer and chat template inside.

    Example: vnmini export gguf runs/quickstart/chat -o chat-q8_0.gguf --quant q8_0
    """
    from vnmini.export.gguf_writer import to_gguf

    from vnmini.errors import VnminiError

    if verify_text is not None and not verify_text.is_file():
        raise VnminiError(f"--verify-text {verify_text}: no such file; pass a UTF-8 .txt file.")
    res = to_gguf(checkpoint, output, quant=quant, force=force, verify=verify, verify_text=verify_text,
                  name=name, threads=threads, progress=True)
    types = ", ".join(f"{k} × {v}" for k, v in sorted(res.tensor_types.items()))
    typer.echo(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {quant}; {types})")
    if res.fallbacks:
        typer.echo(f"fallbacks: {len(res.fallbacks)} tensors in a fallback type, rows too narrow "
                   f"for {quant} (listed in the report)")
    if res.verify is not None:
        v = res.verify
        q, lg = v["quality"], v["logits"]
        typer.echo(
            f"verify: {'PASSED' if v['passed'] else 'FAILED'} — tokenization {'ok' if v['tokenization']['equal'] else 'DIFFERS'}, "
            f"chat {'ok' if v['chat']['equal'] else 'DIFFERS'}, logits max rel err {lg['max_rel_err']:.1e}, "
            f"top-1 {lg['top1_agreement']:.3f}, bpb {q['bpb_torch']:.4f} → {q['bpb_gguf']:.4f} "
            f"({100 * q['dbpb_rel']:+.2f} %)"
        )
        typer.echo(f"report: {res.report_paths[0]}")
        if not v["passed"]:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    for mod in ENGINE_MODULES:
        if importlib.util.find_spec(f"vnmini.cli.{mod}") is not None:
            importlib.import_module(f"vnmini.cli.{mod}")
    app.add_typer(export_app, name="export")
