"""What latentcube refuses: one table of bad inputs -> the message fragment the user must see.

Each row is one line: an id, a function of ``tmp_path`` that builds the bad input and runs the step a
user would run (a library call or the CLI through :func:`cli`), and a regular expression the message
must match. Every error must be a :class:`~latentcube.errors.LatentcubeError` (or a CLI usage error)
in the one-line "problem. Fix: ..." form: a ``KeyError`` or a traceback fails the row. Rows whose input
is accepted with a warning use :func:`warns`.

Adding a case: write (or reuse) a small fixture function below, then add one ``row(...)`` to ``CASES``.
docs/data-model.md ("What latentcube refuses, and why") lists the same cases for users.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentcube.cube import new_cube, open_cube, save_cube, validate_cube
from latentcube.errors import LatentcubeError

# ------------------------------------------------------------------------------- how rows are run


class CliFailed(Exception):
    """The CLI exited non-zero; the message is what it printed on stderr."""


def cli(*args: object) -> str:
    """Run ``latentcube ARGS`` in-process as a user would; raise :class:`CliFailed` with its stderr when
    it exits non-zero (the printed line is what the row checks), return its stdout otherwise."""
    from latentcube.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
    if code:
        text = " ".join(err.getvalue().split())  # rich wraps long lines on stderr: compare as one line
        if "Traceback" in text:
            raise AssertionError(f"the CLI printed a traceback:\n{err.getvalue()}")
        raise CliFailed(text)
    return out.getvalue()


class Warned(Exception):
    """The step ran and warned; the message is the warnings' text."""


def warns(run: Callable[[], object]) -> None:
    """Run ``run``; raise :class:`Warned` with the text of its warnings (a row expecting a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    if caught:
        raise Warned(" | ".join(str(w.message) for w in caught))


@dataclass(frozen=True)
class Row:
    id: str
    run: Callable[[Path], object]
    match: str
    fix: bool = True
    """The message must contain "Fix:" (CLI usage errors of click/typer do not)."""


def row(id: str, run: Callable[[Path], object], match: str, *, fix: bool = True) -> Row:
    return Row(id, run, match, fix)


# ------------------------------------------------------------------------------ fixture functions


def tiny_cube(*, s1: bool = False, nt: int = 6, n: int = 8, seed: int = 0):
    """A valid small cube: reflectance 0.05-0.45, linear backscatter 0.01-0.2 on the S2 dates + 1 day."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2021-03-01", periods=nt, freq="5D")
    kw = {}
    if s1:
        kw = dict(s1=rng.uniform(0.01, 0.2, (nt, 2, n, n)).astype("float32"), time_s1=time + pd.Timedelta("1D"))
    return new_cube(s2=rng.uniform(0.05, 0.45, (nt, 10, n, n)).astype("float32"), time=time,
                    y=5_000_000.0 - 10 * np.arange(n), x=500_000.0 + 10 * np.arange(n), crs="EPSG:32632", **kw)


def saved(tmp: Path, ds=None, name: str = "cube.zarr") -> Path:
    return save_cube(tiny_cube() if ds is None else ds, tmp / name)


# --------------------------------------------------------------------------------------- the table

CASES: list[Row] = [
    # ---- cubes
    row("cube: path does not exist", lambda t: open_cube(t / "nope.zarr"), r"no such cube.*Fix: check the path"),
    row("cube: reflectance as digital numbers", lambda t: validate_cube(tiny_cube().assign(s2=lambda d: d.s2 * 10000)),
        r"unscaled digital numbers.*Fix: divide by 10000"),
    row("cube: S1 in dB", lambda t: validate_cube(tiny_cube(s1=True).assign(s1=lambda d: 10 * np.log10(d.s1))),
        r"looks like decibels.*Fix: ds\['s1'\] = 10 \*\* \(ds\['s1'\] / 10\)"),
    row("cli: validate a missing cube", lambda t: cli("validate", t / "nope.zarr"), r"CubeError: no such cube"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_gets_a_clear_message(case: Row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve where the user is, and nothing lands in the repo
    try:
        case.run(tmp_path)
    except (LatentcubeError, CliFailed, Warned) as err:
        message = str(err)
    else:
        pytest.fail(f"{case.id}: accepted without an error or a warning")
    assert re.search(case.match, message), f"{case.id}: {message!r} does not match {case.match!r}"
    if case.fix:
        assert "Fix:" in message, f"{case.id}: no fix in {message!r}"
