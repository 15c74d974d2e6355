"""Report sections: how every evaluation step hands its results to ``latentcube report``.

A step writes ``RUN_DIR/sections/<order>_<name>.json``; the report reads all of them in ``order`` and
renders each the same way (title, paragraphs, tables, figures), so a new step needs no report code.

Schema (all keys present)::

    {"name": str, "order": int, "title": str,
     "text": [str, ...],                                   # paragraphs, plain text or light Markdown
     "tables": [{"caption": str, "columns": [str, ...], "rows": [[value, ...], ...]}, ...],
     "figures": [{"path": str, "caption": str}, ...],      # paths relative to RUN_DIR
     "data": {...}}                                        # free-form numbers for machines (not rendered)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SECTIONS_DIR", "write_section", "read_sections", "table"]

SECTIONS_DIR = "sections"


def table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """One table of a section; every row must have one value per column."""
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"table {caption!r}: row {r} has {len(r)} values for {len(columns)} columns")
    return {"caption": caption, "columns": list(columns), "rows": rows}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_section(
    run_dir: str | Path,
    name: str,
    *,
    order: int,
    title: str,
    text: Sequence[str] = (),
    tables: Sequence[Mapping[str, Any]] = (),
    figures: Sequence[tuple[str | Path, str]] = (),
    data: Mapping[str, Any] | None = None,
) -> Path:
    """Write one report section to ``run_dir/sections/<order>_<name>.json`` (replacing an older one).

    ``figures`` are (path, caption) pairs, stored relative to ``run_dir`` so the report renders from any
    working directory and after the run directory is moved. A path is read as Python's ``open`` would
    (absolute, or relative to the working directory, e.g. ``Path(run_dir) / "fig.png"`` with a relative
    ``run_dir``); a relative path that does not point inside ``run_dir`` that way is taken as relative
    to ``run_dir`` itself (e.g. ``"figs/map.png"``).
    """
    run_dir = Path(run_dir)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"section name must be alphanumeric with - or _, got {name!r}")
    figs = [{"path": _relative_to_run(run_dir, path), "caption": caption} for path, caption in figures]
    doc = {"name": name, "order": int(order), "title": title, "text": list(text), "tables": list(tables),
           "figures": figs, "data": dict(data or {})}
    folder = run_dir / SECTIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"*_{name}.json"):
        if old.stem.split("_", 1)[1] == name:  # not another section whose name ends in _<name>
            old.unlink()
    path = folder / f"{int(order):03d}_{name}.json"
    path.write_text(json.dumps(_clean(doc), indent=1) + "\n", encoding="utf-8")
    return path


def _relative_to_run(run_dir: Path, path: str | Path) -> str:
    """``path`` relative to ``run_dir`` (POSIX form); see :func:`write_section` for the rule."""
    p, root = Path(path), run_dir.resolve()
    try:
        return p.resolve().relative_to(root).as_posix()  # resolve() reads a relative path from the cwd
    except ValueError:
        if p.is_absolute():
            raise ValueError(f"figure {path} is outside the run directory {run_dir}. "
                             "Fix: write figures inside the run directory.") from None
    inside = (root / p).resolve()
    try:
        return inside.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"figure {path} is outside the run directory {run_dir}. "
                         "Fix: write figures inside the run directory.") from None


def read_sections(run_dir: str | Path) -> list[dict[str, Any]]:
    """All sections of a run, sorted by (order, name); missing folder -> []."""
    folder = Path(run_dir) / SECTIONS_DIR
    if not folder.is_dir():
        return []
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")]
    return sorted(docs, key=lambda d: (d["order"], d["name"]))
