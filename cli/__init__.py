"""The ``vnmini`` command line (Typer). Thin: parse flags, call the library, print.

Each verb group lives in its own module with a ``register(app)`` function,
listed in :data:`COMMAND_MODULES`. :func:`main` turns a
:class:`vnmini.VnminiError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

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
COMMAND_MODULES = ["basic", "corpus", "tokenizer", "data", "train", "plan", "distill", "chat", "serve", "evaluate",
                   "bench", "export", "quickstart"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"vnmini.cli.{_name}").register(app)


def _click_errors() -> tuple[type[BaseException], ...]:
    """Usage-error classes: click's, and the copy typer >= 0.29 vendors as ``typer._click``."""
    found: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        found.append(TyperClickException)
    except ImportError:  # an older typer uses click itself
        pass
    return tuple(found)


_USAGE_ERRORS = _click_errors()
_ABORTS = (click.exceptions.Abort, typer.Abort)
INTERRUPTED = ("interrupted (Ctrl-C); every output is written under a temporary name and renamed when "
               "complete, so nothing half-written was left under its final name")


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns (and exits with) the command's exit code.

    A :class:`VnminiError` becomes its one line and exit 2; a typo or bad flag
    becomes click's usage message and exit 2 (never a traceback); Ctrl-C exits
    130 with a line saying what was kept.
    """
    said = False
    try:
        rv = app(args=argv, prog_name="vnmini", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except VnminiError as e:
        typer.echo(f"error: {e}", err=True)
        code, said = e.exit_code, True
    except click.exceptions.Exit as e:
        code = e.exit_code
    except _USAGE_ERRORS as e:
        e.show()
        code = getattr(e, "exit_code", 2)
    except (*_ABORTS, KeyboardInterrupt):  # typer >= 0.29 turns Ctrl-C into Exit(130) itself
        code = 130
    except OSError as e:
        from vnmini.atomic import WRITE_ERRNOS, write_error

        if e.errno not in WRITE_ERRNOS:
            raise
        typer.echo(f"error: {write_error(Path(e.filename or '?'), e)}", err=True)
        code = 2
    if code == 130 and not said:
        typer.echo(INTERRUPTED, err=True)
    if argv is None:
        sys.exit(code)
    return code
