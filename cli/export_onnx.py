"""``vnmini export onnx``: a checkpoint -> an ONNX Runtime folder (KV cache, quantized, verified).

Adds the ``onnx`` command to the ``export`` group that :mod:`vnmini.cli.export`
owns; the library call is :func:`vnmini.export.to_onnx`.

    vnmini export onnx runs/tiny/final -o out/onnx-int8 --quant int8
"""

from __future__ import annotations

from pathlib import Path

import typer
from vnmini.cli.export import export_app

from vnmini.errors import VnminiError


@export_app.command("onnx")
def export_onnx(
    checkpoint: Path = typer.Argument(..., help="A vnmini / Hugging Face Llama checkpoint folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.onnx + config, tokenizer, report)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, or fp16 (for GPU execution providers)."),
    quant: str = typer.Option("none", "--quant", "-q", help="none, int8 (quantize_dynamic) or int4 (MatMulNBits)."),
    block_size: int = typer.Option(32, "--block-size", help="int4: weights per scale (power of two >= 16)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check against torch; write verify.json/.md."),
    text: Path | None = typer.Option(None, "--text", help="Held-out UTF-8 text for the bits-per-byte check."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output folder."),
    engine: str = typer.Option("torch", "--engine", help="torch (ours), or genai (onnxruntime-genai's builder)."),
    external_data: bool | None = typer.Option(None, "--external-data/--no-external-data",
                                              help="Weights in model.onnx.data (default: only over 2 GB)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset for the exporter."),
) -> None:
    """Export to ONNX with a KV cache, optionally quantized, and verify against torch.

    Example: vnmini export onnx runs/tiny/final -o out/onnx-int4 --quant int4 --block-size 32
    """
    from vnmini.export import to_onnx

    verify_text = None
    if text is not None:
        if not text.is_file():
            raise VnminiError(f"--text {text}: no such file; pass a UTF-8 .txt file of held-out text.")
        try:
            verify_text = text.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise VnminiError(f"--text {text}: not UTF-8 text; convert it to UTF-8.") from e
    folder = to_onnx(checkpoint, out, dtype=dtype, quant=quant, block_size=block_size, verify=verify,
                     force=force, opset=opset, external_data=external_data, engine=engine, verify_text=verify_text)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))
    typer.echo(f"wrote {folder} ({size / 1e6:.1f} MB, {dtype}, quant {quant})")
    if verify and (folder / "verify.md").is_file():
        import json

        typer.echo("verify: " + json.loads((folder / "verify.json").read_text(encoding="utf-8"))["summary"])
        typer.echo(f"report: {folder / 'verify.md'}")


def register(app: typer.Typer) -> None:
    """The command attached itself to ``export_app`` on import; the group is added by ``cli.export``."""
