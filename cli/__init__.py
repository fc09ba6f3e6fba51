"""The ``vnmini`` command line (Typer). Thin: parse flags, call the library, print.

Each verb group lives in its own module with a ``register(app)`` function,
listed in :data:`COMMAND_MODULES`. :func:`main` turns a
:class:`vnmini.VnminiError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from vnmini._version import __version__
from vnmini.errors import VnminiError

app = typer.Typer(
    name="vnmini",
    help="Vietnamese text → a small chat model that runs offline: train, distill, SFT, export, chat, eval, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vnmini {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """vnmini: Vietnamese small language models, from corpus to offline chat."""


# Verb modules, in the order their commands appear in --help.
COMMAND_MODULES = ["basic", "corpus", "tokenizer", "data", "train", "distill", "chat", "evaluate", "bench", "export", "quickstart"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"vnmini.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns (and exits with) the command's exit code."""
    try:
        rv = app(args=argv, prog_name="vnmini", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except VnminiError as e:
        typer.echo(f"error: {e}", err=True)
        code = VnminiError.exit_code
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        code = 130
    if argv is None:
        sys.exit(code)
    return code
