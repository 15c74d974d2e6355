"""One page per run (``latentcube report RUN_DIR``): a self-contained HTML file and its Markdown twin.

The report knows nothing about individual evaluation steps: it renders every section written with
:func:`latentcube.evaluate.sections.write_section`, in order, plus the run's configs (``runs/*/config.yaml``)
and training curves (``training_curves_*.png``, drawn from ``runs/*/metrics.csv`` when missing) in the
training slot of the section orders.

``report.html`` inlines its figures as base64 data URIs and its CSS, and loads nothing else (a Content
Security Policy forbids any other resource), so it can be mailed or archived as one file and printed.
``report.md`` references the figures by their paths relative to the run directory.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latentcube import __version__
from latentcube.errors import LatentcubeError
from latentcube.evaluate.sections import read_sections

__all__ = ["ReportError", "build_report", "format_value"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}

_CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --head: #f3f5f7; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); max-width: 60rem; margin: 2rem auto; padding: 0 1.25rem; }
h1 { font-size: 1.8rem; margin-bottom: .25rem; }
h2 { font-size: 1.35rem; margin-top: 2.5rem; padding-bottom: .25rem; border-bottom: 1px solid var(--line); }
a { color: var(--accent); }
.meta { color: var(--muted); margin-top: 0; }
.meta code { word-break: break-all; }
nav.toc { background: var(--head); border: 1px solid var(--line); border-radius: 6px; padding: .5rem 1.25rem; }
nav.toc ol { margin: .25rem 0; padding-left: 1.25rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .92rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .25rem 0; width: max-content; max-width: 56rem; }
th, td { border: 1px solid var(--line); padding: .3rem .6rem; vertical-align: top; }
th { background: var(--head); text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.table-wrap { overflow-x: auto; }
figure { margin: 1.25rem 0; break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; }
.missing { border-left: 4px solid #cf222e; background: #fff1f0; padding: .4rem .8rem; }
details { margin: .5rem 0; border: 1px solid var(--line); border-radius: 6px; padding: .25rem .75rem; }
summary { cursor: pointer; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--head); padding: .75rem; overflow-x: auto; font-size: .82rem; line-height: 1.35; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
@media print {
  body { max-width: none; margin: 0; font-size: 11pt; }
  nav.toc { display: none; }
  h2 { break-after: avoid; }
  table, figure { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""

class ReportError(LatentcubeError, ValueError):
    """A run directory that is missing or holds nothing to report."""


# Self-containment is enforced, not only promised: the browser refuses anything but inline CSS and data: images.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def format_value(value: Any) -> str:
    """A table cell as text: floats to 4 significant digits, None/NaN as "–", booleans as yes/no.

    Integers are kept whole; floats of magnitude 1e4..1e12 are rounded to an integer instead of
    switching to exponent notation (e.g. 12345.6 -> "12346"), which reads better in tables.
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value == 0:
            return "0"
        if 1e4 <= abs(value) < 1e12:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------- content model


@dataclass
class _Part:
    """One top-level part of the report (an <h2> with its blocks)."""

    anchor: str
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("p", str) | ("table", dict) | ("figure", rel, caption)
    #                                                    | ("config", rel, text) | ("note", str)


def _run_order(name: str) -> tuple[int, str]:
    """Pipeline order for run names (s1, s2, fusion first), then alphabetical."""
    known = ("s1", "s2", "fusion")
    return (known.index(name) if name in known else len(known), name)


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


#: Section order of training (see latentcube.evaluate.sections): configs and curves go just before it.
_TRAINING_ORDER = 20


def _collect(run_dir: Path) -> list[_Part]:
    """The report's parts, in order, from what the run directory holds."""
    taken: set[str] = set()
    parts: list[_Part] = []
    sections = read_sections(run_dir)
    in_sections = {Path(f["path"]).as_posix() for s in sections for f in s.get("figures", [])}

    configs = sorted(run_dir.glob("runs/*/config.yaml"), key=lambda p: _run_order(p.parent.name))
    if configs:
        part = _Part(_slug("configs", taken), "Configuration")
        part.blocks.append(("p", "The configuration of every training run, as used (YAML)."))
        for path in configs:
            part.blocks.append(("config", path.relative_to(run_dir).as_posix(), path.read_text(encoding="utf-8")))
        parts.append(part)

    curves = _training_curves(run_dir)
    curves = [(rel, cap) for rel, cap in curves if rel not in in_sections or cap is None]
    if curves:
        part = _Part(_slug("training curves", taken), "Training curves")
        part.blocks.append(("p", "Train (solid) and validation (dashed) loss parts per epoch, one figure per run."))
        for rel, cap in curves:
            part.blocks.append(("note", rel) if cap is None else ("figure", rel, cap))
        parts.append(part)

    # The run's own parts take the training slot of the section orders (10 data, 20 training, 30 ...).
    before = [sec for sec in sections if sec["order"] < _TRAINING_ORDER]
    generated, parts = parts, []
    for sec in before + [None] + [sec for sec in sections if sec["order"] >= _TRAINING_ORDER]:
        if sec is None:
            parts += generated
            continue
        part = _Part(_slug(str(sec.get("name") or sec.get("title", "")), taken), str(sec.get("title") or sec.get("name")))
        part.blocks += [("p", str(t)) for t in sec.get("text", [])]
        part.blocks += [("table", t) for t in sec.get("tables", [])]
        part.blocks += [("figure", str(f["path"]), str(f.get("caption", ""))) for f in sec.get("figures", [])]
        parts.append(part)
    return parts


def _training_curves(run_dir: Path) -> list[tuple[str, str | None]]:
    """(relative path, caption) of each run's curve figure, by run name.

    A run with ``metrics.csv`` but no ``training_curves_<run>.png`` gets one drawn now; when that fails
    (no loss columns, unwritable folder) the item is (message, None), rendered as a visible note.
    """
    from latentcube.evaluate.curves import plot_training

    items: dict[str, tuple[str, str | None]] = {}
    for png in run_dir.glob("training_curves_*.png"):
        name = png.stem[len("training_curves_"):]
        items[name] = (png.name, f"Training curves: {name}")
    for metrics in run_dir.glob("runs/*/metrics.csv"):
        name = metrics.parent.name
        if name in items:
            continue
        out = run_dir / f"training_curves_{name}.png"
        try:
            plot_training(metrics.parent, out)
            items[name] = (out.name, f"Training curves: {name}")
        except (ValueError, KeyError, OSError) as err:
            items[name] = (f"No training curves for runs/{name}: {err}", None)
    return [items[k] for k in sorted(items, key=_run_order)]


# ------------------------------------------------------------------------------------------ HTML


def _inline_md(text: str) -> str:
    """Escape, then render the light Markdown sections may use: `code`, **bold** and [links](relative/path)
    (paths inside the run folder only: no scheme, no ``..``)."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\[([^\]]+)\]\(((?![^)]*\.\.)[A-Za-z0-9_][A-Za-z0-9_./%-]*)\)", r'<a href="\2">\1</a>', out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _html_table(t: dict[str, Any]) -> str:
    cols = t.get("columns", [])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    numeric = [_numeric_column(t, i) for i in range(len(cols))]
    body = []
    for row in t.get("rows", []):
        cells = "".join(("<td class=\"num\">" if num else "<td>") + html.escape(format_value(v)) + "</td>"
                        for v, num in zip(row, numeric, strict=False))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{_inline_md(str(t['caption']))}</caption>" if t.get("caption") else ""
    return (f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _missing(rel: str, why: str, caption: str) -> str:
    cap = f" ({html.escape(caption)})" if caption else ""
    return f'<p class="missing">Figure missing: <code>{html.escape(rel)}</code>{cap}: {html.escape(why)}.</p>'


def _figure_problem(path: Path) -> str | None:
    """Why a figure cannot be shown (None when it can)."""
    if path.suffix.lower() not in _MIME:
        return f"unsupported image type {path.suffix or '(none)'}"
    if not path.is_file():
        return "file not found"
    return None


def _html_figure(run_dir: Path, rel: str, caption: str) -> str:
    path = run_dir / rel
    why = _figure_problem(path)
    if why:
        return _missing(rel, why, caption)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption or path.stem, quote=True)
    cap = f"<figcaption>{_inline_md(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:{_MIME[path.suffix.lower()]};base64,{data}" alt="{alt}">{cap}</figure>'


def _render_html(run_dir: Path, title: str, meta: str, parts: list[_Part]) -> str:
    toc = "".join(f'<li><a href="#{p.anchor}">{html.escape(p.title)}</a></li>' for p in parts)
    body = []
    for part in parts:
        chunks = [f'<section id="{part.anchor}"><h2>{html.escape(part.title)}</h2>']
        for block in part.blocks:
            kind = block[0]
            if kind == "p":
                chunks.append(f"<p>{_inline_md(block[1])}</p>")
            elif kind == "table":
                chunks.append(_html_table(block[1]))
            elif kind == "figure":
                chunks.append(_html_figure(run_dir, block[1], block[2]))
            elif kind == "config":
                chunks.append(f"<details><summary>{html.escape(block[1])}</summary><pre><code>"
                              f"{html.escape(block[2])}</code></pre></details>")
            elif kind == "note":
                chunks.append(f'<p class="missing">{html.escape(block[1])}</p>')
        chunks.append("</section>")
        body.append("\n".join(chunks))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="latentcube {html.escape(__version__)}">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<p class="meta">{meta}</p>
</header>
<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{toc}</ol></nav>
<main>
{chr(10).join(body)}
</main>
</body>
</html>
"""


# -------------------------------------------------------------------------------------- Markdown


def _md_text(text: str) -> str:
    """Light Markdown kept, raw HTML not: escape & < > outside `code` spans (inside them they show literally)."""
    pieces = re.split(r"(`[^`]*`)", str(text))
    return "".join(p if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p, quote=False)
                   for p in pieces)


def _md_cell(value: Any) -> str:
    return _md_text(format_value(value)).replace("|", "\\|").replace("\n", " ")


def _md_table(t: dict[str, Any]) -> list[str]:
    cols = t.get("columns", [])
    lines = [f"**{_md_text(t['caption'])}**", ""] if t.get("caption") else []
    lines.append("| " + " | ".join(_md_cell(c) for c in cols) + " |")
    lines.append("|" + "|".join("---:" if _numeric_column(t, i) else "---" for i in range(len(cols))) + "|")
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t.get("rows", [])]
    return [*lines, ""]


def _numeric_column(t: dict[str, Any], i: int) -> bool:
    values = [row[i] for row in t.get("rows", []) if row[i] is not None]
    return bool(values) and all(_is_number(v) for v in values)


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _render_md(run_dir: Path, title: str, meta: str, parts: list[_Part]) -> str:
    lines = [f"# {_md_text(title)}", "", meta, "", "## Contents", ""]
    lines += [f"{i}. [{_md_text(p.title)}](#{p.anchor})" for i, p in enumerate(parts, 1)]
    lines.append("")
    for part in parts:
        lines += [f'<a id="{part.anchor}"></a>', "", f"## {_md_text(part.title)}", ""]
        for block in part.blocks:
            kind = block[0]
            if kind == "p":
                lines += [_md_text(block[1]), ""]
            elif kind == "table":
                lines += _md_table(block[1])
            elif kind == "figure":
                rel, caption = block[1], _md_text(block[2])
                why = _figure_problem(run_dir / rel)
                if why:
                    lines += [f"> **Figure missing:** `{rel}`" + (f" ({caption})" if caption else "") + f": {why}.", ""]
                else:
                    alt = (caption or Path(rel).stem).replace("[", "(").replace("]", ")")
                    lines += [f"![{alt}]({rel.replace(' ', '%20')})", ""] + ([f"*{caption}*", ""] if caption else [])
            elif kind == "config":
                fence = _fence(block[2])
                lines += ["<details>", f"<summary>{html.escape(block[1])}</summary>", "", f"{fence}yaml",
                          block[2].rstrip("\n"), fence, "", "</details>", ""]
            elif kind == "note":
                lines += [f"> {_md_text(block[1])}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------- API


def build_report(run_dir: str | Path, *, title: str | None = None) -> tuple[Path, Path]:
    """Write ``run_dir/report.html`` (self-contained) and ``run_dir/report.md``; return both paths.

    Content, each part only when present, after a header (version, UTC date, run directory) and a table
    of contents: every section of :func:`latentcube.evaluate.sections.read_sections` in order, with the
    run's own parts in the training slot (before the first section of order >= 20): the configs of
    ``runs/*/config.yaml`` and the training curves (``training_curves_*.png``, drawn from
    ``runs/*/metrics.csv`` when a run's figure is missing, left out when a section already shows it).
    Table numbers are shown with :func:`format_value`. A figure whose file is missing becomes a
    visible note in both files.

    Raises:
        ReportError: ``run_dir`` does not exist or holds nothing to report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist. Fix: give the --out folder of "
                          "`latentcube demo` (or a folder with sections/ or runs/).")
    parts = _collect(run_dir)
    if not parts:
        raise ReportError(f"nothing to report in {run_dir}: it has no sections/*.json, runs/*/config.yaml, "
                          "runs/*/metrics.csv or training_curves_*.png. Fix: run `latentcube demo --out "
                          f"{run_dir}` or an evaluation step first.")
    title = title or f"latentcube report: {run_dir.resolve().name}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = str(run_dir.resolve())
    meta_html = (f"latentcube {html.escape(__version__)} · {when} · run directory "
                 f"<code>{html.escape(where)}</code>")
    meta_md = f"latentcube {__version__} · {when} · run directory `{where}`"
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    html_path.write_text(_render_html(run_dir, title, meta_html, parts), encoding="utf-8")
    md_path.write_text(_render_md(run_dir, title, meta_md, parts), encoding="utf-8")
    return html_path, md_path
