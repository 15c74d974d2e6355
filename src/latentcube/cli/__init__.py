"""The ``latentcube`` command: a thin typer layer over library functions (no logic lives here).

The commands live in one module per pipeline part (``_data``, ``_model``, ``_products``, ``_evaluate``);
each parses its arguments and calls one library function.

Bad input prints one clear line and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from latentcube import __version__
from latentcube.errors import LatentcubeError

app = typer.Typer(
    name="latentcube",
    help="Sentinel-1 + Sentinel-2 time series -> analysis-ready embedding cubes (10 m, every S2 date).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
# Results on stdout are read by people and by scripts: paths and lines are never wrapped at the
# terminal width (a wrapped path is a broken path) and never parsed as markup or re-coloured.
out = Console(soft_wrap=True, highlight=False, markup=False)


def _version(value: bool) -> None:
    if value:
        out.print(f"latentcube {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """Options before the command; --debug is read by :func:`main` anywhere on the line."""




def _items(text: str, kind: type = str) -> tuple:
    """A comma-separated option as its non-empty items (converted by ``kind``)."""
    return tuple(kind(t.strip()) for t in text.split(",") if t.strip())


def _table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> Table:
    table = Table(title=title, show_header=header is not None)
    # The first column names the rows: keep it whole on a narrow terminal (the other columns wrap instead).
    first = min(max((len(str(r[0])) for r in rows if r), default=0), 40)
    for i, col in enumerate(header or ("", "")):
        table.add_column(col, min_width=first if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def _fail(exc: BaseException, hint: bool) -> None:
    console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True)
    if hint:
        console.print("(run with --debug for the traceback)", style="dim")
    sys.exit(1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings API
    """Warnings as one line on stderr, like errors: the message for the user, not the source line that raised it."""
    kind = "" if issubclass(category, UserWarning) else f" ({category.__name__})"  # e.g. (RuntimeWarning)
    console.print(f"warning{kind}: {message}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one clear line on errors, the traceback with ``--debug``.

    A :class:`~latentcube.errors.LatentcubeError` is a problem with the user's input whose message names
    the fix: it is printed alone. Anything else is printed the same way, with a hint to ``--debug``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        with warnings.catch_warnings():  # restored on return: main() is also called in-process (tests, notebooks)
            warnings.showwarning = _show_warning
            app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except LatentcubeError as exc:
        if debug:
            raise
        _fail(exc, hint=False)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary turns every failure into one line
        # typer vendors its own click; usage errors print click's usual message and exit 2.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        _fail(exc, hint=True)
    sys.exit(0)


# Registered last: the command modules use app, the consoles and the helpers above.
from latentcube.cli import _data, _model, _products, _evaluate  # noqa: E402,F401,I001 - pipeline order in --help
