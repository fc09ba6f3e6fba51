"""``vnmini chat MODEL``: interactive offline chat in the terminal.

A thin loop around :class:`vnmini.runtime.chat.ChatSession`: read a line, stream
the answer, repeat. ``/reset`` forgets the conversation, ``/exit`` (or Ctrl-D)
quits, ``/help`` lists the commands. Ctrl-C while an answer streams stops that
answer (it stays in the history, cut where it stopped) and returns to the
prompt; Ctrl-C at an empty prompt twice in a row quits. Old turns that no longer
fit the context window are dropped with a notice.

Input from any Vietnamese input method works: the session normalizes text (NFC,
one tone placement), and bytes that are not valid UTF-8 become U+FFFD rather
than crashing the loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vnmini.runtime.sampling import DEFAULTS

HELP = """commands:
  /reset   forget the conversation (the system prompt stays)
  /exit    quit (also /quit or Ctrl-D)
  /help    this list
Ctrl-C stops the answer being written; twice at an empty prompt quits."""


def _read_line(prompt: str) -> str:
    line = input(prompt)
    # A terminal in a non-UTF-8 locale hands undecodable bytes over as surrogates: recover the
    # UTF-8 that was really typed, and replace what is not UTF-8 at all.
    return line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def chat(
    model: Path = typer.Argument(..., help="Checkpoint folder, .gguf file or ONNX folder."),
    system: str | None = typer.Option(None, "--system", "-s", help="System prompt (kept when old turns are dropped)."),
    max_new_tokens: int = typer.Option(DEFAULTS.max_new_tokens, "--max-new-tokens", "-n",
                                       help="Longest answer, in tokens."),
    temperature: float = typer.Option(DEFAULTS.temperature, "--temperature", "-t", help="0 = greedy."),
    top_k: int = typer.Option(DEFAULTS.top_k, "--top-k"),
    top_p: float = typer.Option(DEFAULTS.top_p, "--top-p"),
    repetition_penalty: float = typer.Option(DEFAULTS.repetition_penalty, "--repetition-penalty"),
    seed: int | None = typer.Option(None, "--seed"),
    backend: str | None = typer.Option(None, "--backend", help="torch, gguf or onnx (default: from the path)."),
    threads: int | None = typer.Option(None, "--threads"),
    stats: bool = typer.Option(False, "--stats", help="Print tokens/s after each answer."),
) -> None:
    """Chat with a model in the terminal, offline, with streaming answers.

    Example: vnmini chat runs/quickstart/chat.q4_0.gguf --system "Trả lời ngắn gọn."
    """
    import vnmini
    from vnmini.errors import VnminiError
    from vnmini.runtime.chat import ChatSession

    try:  # line editing and history where the platform has it (not on Windows)
        import readline  # noqa: F401
    except ImportError:
        pass
    gen = vnmini.load(model, backend=backend, threads=threads)
    session = ChatSession(gen, system_prompt=system, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    typer.echo(f"vnmini chat — {model} ({gen.backend}, context {gen.context_length} tokens). /help for commands.")
    interrupts = 0
    while True:
        try:
            line = _read_line(">>> ")
        except EOFError:
            typer.echo("")
            return
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts >= 2:
                typer.echo("")
                return
            typer.echo("\n(Ctrl-C again, /exit or Ctrl-D to quit)")
            continue
        interrupts = 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return
        if cmd == "/help":
            typer.echo(HELP)
            continue
        if cmd == "/reset":
            session.reset()
            typer.echo("(conversation cleared)")
            continue
        if cmd.startswith("/") and " " not in cmd:
            typer.echo(f"unknown command {cmd}; /help lists them.")
            continue
        events = None
        try:  # Ctrl-C anywhere from here to the end of the answer stops the answer only
            events = session.send(line)
            if session.dropped_turns:
                typer.echo(f"(dropped the {session.dropped_turns} oldest turn(s) to fit the "
                           f"{gen.context_length}-token context)")
            for ev in events:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
        except VnminiError as e:  # e.g. a message longer than the context: say so, keep chatting
            typer.echo(f"error: {e}", err=True)
            continue
        except KeyboardInterrupt:
            if events is not None:
                events.close()
            typer.echo("\n(stopped)")
            continue
        typer.echo("")
        if stats and session.last_stats.get("decode_s"):
            s = session.last_stats
            typer.echo(f"({s['new_tokens']} tokens, {s['new_tokens'] / s['decode_s']:.1f} tok/s, "
                       f"first token {s['time_to_first_token_s'] * 1000:.0f} ms)")


def register(app: typer.Typer) -> None:
    app.command()(chat)
