"""Compare two `latentcube demo` output folders: embedding stores, model weights and the report's tables.

Used to check that a refactor leaves the demo's results unchanged up to float summation order::

    python benchmarks/compare_demo.py demo-before demo-after [--rtol 5e-3]

Prints, per embedding store under ``embeddings/`` (both runs), each variable's max absolute difference and
that relative to the variable's largest magnitude, whether the NaN patterns agree; per ``runs/*/model.pt``
the largest weight difference; then each table of ``report.md`` (keyed by section and caption) whose
numbers differ by more than ``--rtol`` (the report prints 4 significant digits), and the tables only one
report has. The "Timings" section is skipped (wall-clock seconds). Exit status 1 when a store, a model or a
common table differs beyond the tolerances, else 0.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np


def compare_stores(a: Path, b: Path, rtol: float) -> bool:
    """Each common ``embeddings/*.zarr`` store: max |a - b| per data variable; True when all within ``rtol``."""
    import xarray as xr

    ok = True
    names_a = {p.name for p in (a / "embeddings").glob("*.zarr")}
    names_b = {p.name for p in (b / "embeddings").glob("*.zarr")}
    for name in sorted(names_a ^ names_b):
        print(f"store {name}: only in {'first' if name in names_a else 'second'}")
    for name in sorted(names_a & names_b):
        da, db = xr.open_zarr(a / "embeddings" / name), xr.open_zarr(b / "embeddings" / name)
        for var in sorted(set(da.data_vars) & set(db.data_vars)):
            x, y = np.asarray(da[var].values), np.asarray(db[var].values)
            if x.shape != y.shape:
                print(f"store {name} {var}: shapes {x.shape} vs {y.shape}")
                ok = False
                continue
            if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
                same = bool((x == y).all())
                print(f"store {name} {var}: {'equal' if same else 'DIFFERENT'} ({x.dtype})")
                ok &= same
                continue
            x, y = x.astype("float64"), y.astype("float64")
            nan_same = bool((np.isnan(x) == np.isnan(y)).all())
            both = np.isfinite(x) & np.isfinite(y)
            diff = float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0
            scale = float(np.abs(x[both]).max()) if both.any() else 0.0
            rel = diff / scale if scale else diff
            good = nan_same and rel <= rtol
            ok &= good
            print(f"store {name} {var}: max abs diff {diff:.3g} (scale {scale:.3g}, relative {rel:.2g}), "
                  f"NaN pattern {'same' if nan_same else 'DIFFERENT'}{'' if good else '  <-- beyond tolerance'}")
    return ok


def compare_models(a: Path, b: Path, rtol: float) -> bool:
    """Each common ``runs/*/model.pt``: the largest weight difference relative to that tensor's largest value."""
    import torch

    ok = True
    for path in sorted((a / "runs").glob("*/model.pt")):
        other = b / path.relative_to(a)
        if not other.exists():
            print(f"model {path.parent.name}: only in first")
            continue
        sa = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        sb = torch.load(other, map_location="cpu", weights_only=True)["state_dict"]
        if sa.keys() != sb.keys():
            print(f"model {path.parent.name}: different parameter names")
            ok = False
            continue
        worst = max((float((sa[k].double() - sb[k].double()).abs().max() / sa[k].double().abs().max().clamp(min=1e-12)), k)
                    for k in sa if sa[k].is_floating_point() and sa[k].numel())
        ok &= worst[0] <= rtol
        print(f"model {path.parent.name}: largest relative weight difference {worst[0]:.2g}"
              + (f" ({worst[1]})" if worst[0] else ""))
    return ok


def md_tables(report: Path) -> dict[str, list[list[str]]]:
    """The tables of a report.md, keyed ``section / caption`` (rows of cell strings, header row first)."""
    tables: dict[str, list[list[str]]] = {}
    section = caption = ""
    current: list[list[str]] | None = None
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section, caption = line[3:].strip(), ""
        elif line.startswith("**") and line.endswith("**"):
            caption = line.strip("*")
        if line.startswith("|"):
            if current is None:
                current = tables.setdefault(f"{section} / {caption}", [])
            if not re.fullmatch(r"\|[-:|]+\|", line):
                current.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        else:
            current = None
    return tables


def _numbers(cell: str) -> list[float] | None:
    """The numbers of a cell (``0.91``, ``0.883 ± 0.019``, ``-0.05``), or None for a label or ``–``."""
    parts = cell.replace("−", "-").replace(",", "").split(" ± ")
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def _keyed(rows: list[list[str]]) -> tuple[list[str], dict[tuple[str, ...], dict[str, str]]]:
    """Header, and each row as ``{column: cell}`` keyed by its label cells (the cells that are not numbers)."""
    header, body = rows[0], rows[1:]
    labels = [i for i in range(len(header)) if any(_numbers(r[i]) is None and r[i] != "–" for r in body)]
    keyed: dict[tuple[str, ...], dict[str, str]] = {}
    for r in body:
        key = tuple(r[i] for i in labels)
        while key in keyed:  # repeated labels: keep each row, in order
            key = (*key, "+")
        keyed[key] = dict(zip(header, r, strict=True))
    return header, keyed


def compare_tables(a: Path, b: Path, rtol: float) -> bool:
    """The tables of both report.md files (Timings left out), rows matched by their labels and columns by name."""
    ta, tb = md_tables(a / "report.md"), md_tables(b / "report.md")
    ta = {k: v for k, v in ta.items() if not k.startswith("Timings")}
    tb = {k: v for k, v in tb.items() if not k.startswith("Timings")}
    for key in sorted(ta.keys() - tb.keys()):
        print(f"table only in first: {key}")
    for key in sorted(tb.keys() - ta.keys()):
        print(f"table only in second: {key}")
    ok, n_cells, worst = True, 0, (0.0, "")
    for key in sorted(ta.keys() & tb.keys()):
        (ha, ra), (hb, rb) = _keyed(ta[key]), _keyed(tb[key])
        for col in [c for c in ha if c not in hb]:
            print(f"table {key}: column only in first: {col}")
        for col in [c for c in hb if c not in ha]:
            print(f"table {key}: column only in second: {col}")
        for row in [r for r in ra if r not in rb]:
            print(f"table {key}: row only in first: {' / '.join(row)}")
        for row in [r for r in rb if r not in ra]:
            print(f"table {key}: row only in second: {' / '.join(row)}")
        for row in [r for r in ra if r in rb]:
            for col in [c for c in ha if c in hb]:
                ca, cb = ra[row][col], rb[row][col]
                n_cells += 1
                xa, xb = _numbers(ca), _numbers(cb)
                if xa is None or xb is None or len(xa) != len(xb):
                    if ca != cb:
                        print(f"table {key}: {' / '.join(row)}, {col}: {ca!r} vs {cb!r}")
                        ok = False
                    continue
                # Relative to the cell's largest number (a "mean ± sd" cell: the mean), at least 1e-3.
                scale = max(*map(abs, xa), *map(abs, xb), 1e-3)
                rel = max(abs(u - v) for u, v in zip(xa, xb, strict=True)) / scale
                if rel > worst[0]:
                    worst = (rel, f"{key}: {' / '.join(row)}, {col}: {ca} vs {cb}")
                if rel > rtol:
                    print(f"table {key}: {' / '.join(row)}, {col}: {ca} vs {cb} (relative {rel:.2g})")
                    ok = False
    print(f"{len(ta.keys() & tb.keys())} common tables, {n_cells} common cells; largest relative difference "
          f"{worst[0]:.2g}" + (f" ({worst[1]})" if worst[1] else ""))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--rtol", type=float, default=5e-3,
                        help="largest relative difference of a table number (default 5e-3: the report prints 4 digits)")
    parser.add_argument("--store-rtol", type=float, default=1e-4,
                        help="largest difference of a store value or weight, relative to the largest magnitude (1e-4)")
    args = parser.parse_args(argv)
    ok = compare_stores(args.first, args.second, args.store_rtol)
    ok &= compare_models(args.first, args.second, args.store_rtol)
    ok &= compare_tables(args.first, args.second, args.rtol)
    print("same up to the tolerances" if ok else "DIFFERENT beyond the tolerances")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
