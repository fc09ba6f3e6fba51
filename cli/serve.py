"""``vnmini serve MODEL``: an OpenAI-compatible API and a web chat page, offline, on this machine.

A thin verb over :func:`vnmini.runtime.server.serve` (Python: ``vnmini.serve(...)``).

    vnmini serve runs/quickstart/export/chat-q4_0.gguf            # http://127.0.0.1:8000/
    vnmini serve runs/quickstart/chat --port 9000 --api-key s3cret --max-queue 4
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    model: Path = typer.Argument(..., help="Checkpoint folder, .gguf file or ONNX folder."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (127.0.0.1 = this machine only; 0.0.0.0 = every interface)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port (0 = any free port)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="VNMINI_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on /v1 (also $VNMINI_API_KEY)."),
    max_queue: int = typer.Option(8, "--max-queue",
                                  help="Requests that may wait while one generates; more get HTTP 429."),
    name: str | None = typer.Option(None, "--name", help="Model id in /v1/models (default: the file or folder name)."),
    backend: str | None = typer.Option(None, "--backend", help="torch, gguf or onnx (default: from the path)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for the model."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: warning, info, debug."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with a web chat page at /.

    Example: vnmini serve runs/quickstart/export/chat-q4_0.gguf --port 8000
    """
    from vnmini.runtime.server import serve as run

    run(model, host=host, port=port, api_key=api_key, max_queue=max_queue, name=name, backend=backend,
        threads=threads, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command()(serve)
