"""The ``latentcube`` command: a thin typer layer over library functions (no logic lives here).

Bad input prints one clear line and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from latentcube import __version__

app = typer.Typer(
    name="latentcube",
    help="Sentinel-1 + Sentinel-2 time series -> analysis-ready embedding cubes (10 m, every S2 date).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"latentcube {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _state["debug"] = debug


# ------------------------------------------------------------------------------------- commands


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the world's cubes and FLUXNET files.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives identical data.")] = 0,
) -> None:
    """Simulate the synthetic world (S1/S2 cubes + flux towers) and write it to OUT."""
    from latentcube.synthetic import make_world, write_world

    with console.status("simulating the synthetic world"):
        world = make_world(seed=seed)
    with console.status(f"writing {len(world.cubes)} cubes to {out_dir}"):
        write_world(world, out_dir)
    for name in world.cubes:
        out.print(str(out_dir / f"{name}.zarr"))


@app.command()
def info(
    cube: Annotated[Path, typer.Argument(help="A cube (*.zarr directory or *.nc file).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Dimensions, dates, valid fractions, CRS and value ranges of a cube (and whether it is valid)."""
    from latentcube.cube import CubeError, cube_summary, open_cube, validate_cube

    ds = open_cube(cube)
    summary = cube_summary(ds)
    try:
        validate_cube(ds)
        summary["valid"] = "yes"
    except CubeError as err:
        summary["valid"] = f"no: {err}"
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    table = Table(title=str(cube), show_header=False)
    for key in ("valid", "crs", "dims", "pixel_size_m", "bounds"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    for var in ("s2", "s1"):
        if var in summary:
            s = summary[var]
            table.add_row(f"{var} dates", f"{s['dates']} ({s['first']} .. {s['last']})")
            table.add_row(f"{var} bands", " ".join(s["bands"]))
            table.add_row(f"{var} valid fraction", f"mean {s['valid_fraction_mean']:.3f}; {s['dates_valid_ge_50pct']} dates >= 50 % valid")
            if s["value_p1_p50_p99"]:
                table.add_row(f"{var} p1/p50/p99", " / ".join(f"{v:.4g}" for v in s["value_p1_p50_p99"]))
    table.add_row("variables", ", ".join(summary["variables"]))
    out.print(table)


@app.command()
def validate(cube: Annotated[Path, typer.Argument(help="A cube (*.zarr or *.nc).")]) -> None:
    """Check a cube against the data model; exit 1 with the problem and the fix if it is invalid."""
    from latentcube.cube import open_cube, validate_cube

    validate_cube(open_cube(cube))
    out.print(f"{cube}: valid")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 0,
) -> None:
    """Run the end-to-end demo on the synthetic world and print where the report is."""
    from latentcube.demo import run_demo

    with console.status("demo") as status:
        result = run_demo(out_dir, seed=seed, log=lambda msg: status.update(f"demo: {msg}"))
    for step, seconds in result.timings.items():
        console.print(f"  {step:<12} {seconds:6.1f} s")
    out.print(f"report: {result.report}")


# ------------------------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one clear line on expected errors, traceback with ``--debug``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _state["debug"] = debug
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary turns every failure into one line
        # typer vendors its own click; usage errors print click's usual message and exit 2.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        console.print("(run with --debug for the traceback)", style="dim")
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
