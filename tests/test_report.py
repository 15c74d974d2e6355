"""The run report: self-contained HTML + Markdown from configs, training curves and sections.

Fast tests parse the files; ``test_report_renders_in_chromium`` opens the page in headless Chromium
(Debian package ``chromium``) and skips cleanly where no Chromium is installed.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import shutil
import struct
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from latentcube import __version__
from latentcube.cli import main
from latentcube.evaluate.sections import table, write_section
from latentcube.report import ReportError, build_report, format_value

CONFIG_YAML = "stage: s1\nseed: 0\noptim:\n  lr: 0.002\nnote: a <tag> & more\n"


def _png(path: Path, size_in: tuple[float, float], dpi: int) -> Path:
    fig = Figure(figsize=size_in, dpi=dpi)
    fig.subplots().plot([0, 1, 2], [1, 0, 2])
    fig.savefig(path)
    return path


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk: an independent reference for what the browser decodes."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A small fake run: one training run (config + metrics), two figures, three sections, one missing figure."""
    run = tmp_path / "run"
    (run / "runs" / "s1").mkdir(parents=True)
    (run / "runs" / "s1" / "config.yaml").write_text(CONFIG_YAML)
    (run / "runs" / "s1" / "metrics.csv").write_text(
        "epoch,step,train/center_mae,train/context_mae,val/center_mae,val/context_mae\n"
        "0,10,0.30,0.40,,\n0,10,,,0.28,0.39\n1,20,0.20,0.30,,\n1,20,,,0.19,0.31\n")
    (run / "figs").mkdir()
    _png(run / "figs" / "map.png", (3, 2), 50)
    _png(run / "scatter.png", (2, 2), 40)
    write_section(run, "timings", order=90, title="Timings",
                  tables=[table("wall-clock seconds", ["step", "s"], [["train s1", 18.34], ["total", 12345.6]])])
    write_section(run, "gpp", order=60, title="GPP at flux towers",
                  text=["Per-date embeddings against `NDVI` and **annual** means.", "Second paragraph <not a tag>."],
                  tables=[table("per site", ["site", "NRMSE", "R²", "n"],
                                [["XS-DB1", 0.123456, 0.8, 365], ["<b>XS|GR1</b>", None, float("nan"), 12]])],
                  figures=[(run / "scatter.png", "observed vs predicted"), ("figs/gone.png", "lost figure")])
    write_section(run, "data", order=10, title="Synthetic world", text=["Nine cubes."],
                  tables=[table("cubes", ["cube", "dates"], [["scene_000", 73]])],
                  figures=[(run / "figs" / "map.png", "a map")])
    return run


class _Doc(HTMLParser):
    """What the tests look at in the HTML: headings, tables with their cell texts, images, links, tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.headings: dict[str, list[str]] = {"h1": [], "h2": []}
        self.tables: list[list[list[str]]] = []
        self.captions: list[str] = []
        self.imgs: list[dict[str, str | None]] = []
        self.hrefs: list[str] = []
        self.ids: list[str] = []
        self.text_of: dict[str, list[str]] = {}
        self._stack: list[str] = []
        self._cell: list[str] | None = None
        self._cap: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self._stack.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "caption":
            self._cap = []
        elif tag == "img":
            self.imgs.append(a)
            self._stack.pop()  # void element
        elif tag in ("meta", "link"):
            self._stack.pop()
            if tag == "link":
                self.hrefs.append(a.get("href") or "")
        elif tag == "a":
            self.hrefs.append(a.get("href") or "")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "caption" and self._cap is not None:
            self.captions.append("".join(self._cap))
            self._cap = None
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._cap is not None:
            self._cap.append(data)
        for tag in ("h1", "h2"):
            if self._stack and self._stack[-1] == tag:
                self.headings[tag].append(data)
        if self._stack:
            self.text_of.setdefault(self._stack[-1], []).append(data)


def _parse(path: Path) -> _Doc:
    doc = _Doc()
    doc.feed(path.read_text(encoding="utf-8"))
    doc.close()
    return doc


def test_format_value_hand_cases():
    assert format_value(None) == "–" and format_value(float("nan")) == "–" and format_value(float("inf")) == "–"
    assert format_value(0.123456) == "0.1235" and format_value(-7.12345) == "-7.123" and format_value(64.9) == "64.9"
    assert format_value(1.2e-7) == "1.2e-07" and format_value(0.0) == "0" and format_value(-0.0) == "0"
    assert format_value(12345.6) == "12346" and format_value(1234.56) == "1235" and format_value(3e13) == "3e+13"
    assert format_value(365) == "365" and format_value(True) == "yes" and format_value("a<b") == "a<b"


def test_html_is_self_contained_with_all_parts_in_order(run_dir):
    html_path, md_path = build_report(run_dir, title="Demo <run>")
    assert (html_path, md_path) == (run_dir / "report.html", run_dir / "report.md")
    doc = _parse(html_path)
    assert doc.headings["h1"] == ["Demo <run>"]
    assert doc.headings["h2"] == ["Synthetic world", "Configuration", "Training curves", "GPP at flux towers", "Timings"]
    # Contents: one same-page link per part, each pointing at an existing id; no other links, no scripts.
    assert doc.hrefs == ["#data", "#configs", "#training-curves", "#gpp", "#timings"]
    assert all(h[1:] in doc.ids for h in doc.hrefs)
    assert "script" not in doc.tags and "link" not in doc.tags
    # Figures: map, scatter and the training curves drawn from metrics.csv; bytes inlined exactly.
    srcs = [img["src"] for img in doc.imgs]
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    inlined = [base64.b64decode(s.split(",", 1)[1]) for s in srcs]
    expected = [run_dir / "figs" / "map.png", run_dir / "training_curves_s1.png", run_dir / "scatter.png"]
    assert inlined == [p.read_bytes() for p in expected]
    assert [img["alt"] for img in doc.imgs] == ["a map", "Training curves: s1", "observed vs predicted"]
    # Tables: captions, header, numbers to 4 significant digits, None/NaN as "–", raw '<' kept as text.
    assert doc.captions == ["cubes", "per site", "wall-clock seconds"]
    cubes, gpp, timings = doc.tables
    assert cubes == [["cube", "dates"], ["scene_000", "73"]]
    assert gpp == [["site", "NRMSE", "R²", "n"], ["XS-DB1", "0.1235", "0.8", "365"], ["<b>XS|GR1</b>", "–", "–", "12"]]
    assert timings == [["step", "s"], ["train s1", "18.34"], ["total", "12346"]]
    raw = html_path.read_text(encoding="utf-8")
    assert "&lt;b&gt;XS|GR1&lt;/b&gt;" in raw and "<b>XS" not in raw
    assert "&lt;not a tag&gt;" in raw and "<code>NDVI</code>" in raw and "<strong>annual</strong>" in raw
    # Config shown verbatim (escaped) inside a <details> block; header names version and run dir.
    assert "<summary>runs/s1/config.yaml</summary>" in raw and "note: a &lt;tag&gt; &amp; more" in raw
    assert f"latentcube {__version__}" in raw and str(run_dir.resolve()) in raw
    assert "default-src 'none'; img-src data:" in raw  # the CSP that makes self-containment checkable


def test_missing_figure_is_a_visible_note_not_a_crash(run_dir):
    html_path, md_path = build_report(run_dir)
    raw = html_path.read_text(encoding="utf-8")
    assert '<p class="missing">Figure missing: <code>figs/gone.png</code> (lost figure): file not found.</p>' in raw
    assert "> **Figure missing:** `figs/gone.png` (lost figure): file not found." in md_path.read_text(encoding="utf-8")


def test_markdown_twin(run_dir):
    _, md_path = build_report(run_dir, title="Demo")
    md = md_path.read_text(encoding="utf-8")
    lines = md.splitlines()
    assert lines[0] == "# Demo"
    assert [ln for ln in lines if ln.startswith("## ")] == [
        "## Contents", "## Synthetic world", "## Configuration", "## Training curves", "## GPP at flux towers", "## Timings"]
    assert "2. [Configuration](#configs)" in lines and '<a id="gpp"></a>' in lines
    # Tables: numeric columns right-aligned, '|' escaped, '<' escaped, None as "–".
    assert "| site | NRMSE | R² | n |" in lines and "|---|---:|---:|---:|" in lines
    assert "| XS-DB1 | 0.1235 | 0.8 | 365 |" in lines
    assert "| &lt;b&gt;XS\\|GR1&lt;/b&gt; | – | – | 12 |" in lines
    # Figures by path relative to the run directory, each resolving to a file.
    images = [ln for ln in lines if ln.startswith("![")]
    assert images == ["![a map](figs/map.png)", "![Training curves: s1](training_curves_s1.png)",
                      "![observed vs predicted](scatter.png)"]
    assert all((run_dir / ln.split("](")[1][:-1]).is_file() for ln in images)
    assert "```yaml" in md and "note: a <tag> & more" in md  # config verbatim inside its fence
    assert "Per-date embeddings against `NDVI` and **annual** means." in lines


def test_training_curves_existing_png_kept_and_not_repeated(run_dir):
    png = _png(run_dir / "training_curves_s1.png", (2, 1), 30)
    before = png.read_bytes()
    write_section(run_dir, "training", order=20, title="Training", figures=[(png, "curves from the step")])
    html_path, _ = build_report(run_dir)
    assert png.read_bytes() == before  # an existing figure is used, not redrawn
    doc = _parse(html_path)
    assert "Training curves" not in doc.headings["h2"]  # already shown by the section: no second copy
    assert [img["alt"] for img in doc.imgs].count("curves from the step") == 1


def test_metrics_without_losses_give_a_note(tmp_path):
    run = tmp_path / "run"
    (run / "runs" / "x").mkdir(parents=True)
    (run / "runs" / "x" / "metrics.csv").write_text("epoch,step,lr\n0,1,0.1\n")
    html_path, md_path = build_report(run)
    raw = html_path.read_text(encoding="utf-8")
    assert "No training curves for runs/x: no loss parts found" in raw
    assert not (run / "training_curves_x.png").exists()


def test_errors_for_missing_or_empty_run_dir(tmp_path):
    with pytest.raises(ReportError, match="run directory .*missing does not exist. Fix: give the --out folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(ReportError, match="nothing to report in .*empty: it has no sections/\\*.json.*Fix: run"):
        build_report(tmp_path / "empty")


def test_cli_report(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as ok:
        main(["report", str(run_dir), "--title", "CLI [title]"])
    assert ok.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(run_dir / "report.html"), str(run_dir / "report.md")]
    assert (run_dir / "report.md").read_text(encoding="utf-8").startswith("# CLI [title]\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "empty")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "ReportError: nothing to report in" in err and "latentcube demo --out" in err and "Traceback" not in err
    assert "--debug" not in err  # a LatentcubeError names its fix: no hint needed


def _assert_every_figure_renders(html_path: Path, md_path: Path, expected: dict[str, Path]) -> None:
    """No "Figure missing" in either file; every <img> decodes as a PNG equal to its file; every Markdown
    image link resolves from the report's folder."""
    raw, md = html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    assert "Figure missing" not in raw and "Figure missing" not in md
    doc = _parse(html_path)
    assert [img["alt"] for img in doc.imgs] == list(expected)
    for img in doc.imgs:
        data = base64.b64decode(img["src"].split(",", 1)[1])
        assert data == expected[img["alt"]].read_bytes()
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and pixels.shape[:2] == _png_size(expected[img["alt"]])[::-1]
    links = [ln.split("](", 1)[1][:-1] for ln in md.splitlines() if ln.startswith("![")]
    assert len(links) == len(expected) and all((md_path.parent / rel).is_file() for rel in links)


def test_relative_run_dir_from_another_cwd_and_after_a_move(tmp_path, monkeypatch, capsys):
    """Steps given a relative run directory (``make demo`` passes ``--out demo-output``) store figure
    paths relative to it, so the report renders from any working directory and after a move."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    run = Path("out")
    (run / "evaluation" / "probe").mkdir(parents=True)
    colour = _png(run / "s2_true_colour.png", (2, 2), 40)
    probe = _png(run / "evaluation" / "probe" / "probe.png", (3, 2), 40)  # as the probe step writes it
    write_section(run, "data", order=10, title="Data", figures=[(colour, "true colour")])
    write_section(run, "probe", order=70, title="Probe", figures=[(probe, "probe"), ("s2_true_colour.png", "again")])
    stored = [f["path"] for name in ("010_data", "070_probe")
              for f in json.loads((run / "sections" / f"{name}.json").read_text())["figures"]]
    assert stored == ["s2_true_colour.png", "evaluation/probe/probe.png", "s2_true_colour.png"]

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    html_path, md_path = build_report(Path("../work/out"))
    absolute = tmp_path / "work" / "out"
    _assert_every_figure_renders(html_path, md_path, {"true colour": absolute / "s2_true_colour.png",
                                                      "probe": absolute / "evaluation" / "probe" / "probe.png",
                                                      "again": absolute / "s2_true_colour.png"})

    shutil.move(absolute, tmp_path / "moved")
    with pytest.raises(SystemExit) as ok:
        main(["report", "../moved"])
    assert ok.value.code == 0, capsys.readouterr().err
    moved = tmp_path / "moved"
    _assert_every_figure_renders(moved / "report.html", moved / "report.md",
                                 {"true colour": moved / "s2_true_colour.png",
                                  "probe": moved / "evaluation" / "probe" / "probe.png",
                                  "again": moved / "s2_true_colour.png"})


def test_figure_outside_the_run_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("run").mkdir()
    with pytest.raises(ValueError, match=r"figure \.\./other/x\.png is outside the run directory run\. Fix: write"):
        write_section("run", "s", order=1, title="T", figures=[("../other/x.png", "c")])
    with pytest.raises(ValueError, match="outside the run directory"):
        write_section("run", "s", order=1, title="T", figures=[(tmp_path / "x.png", "c")])


@pytest.mark.slow
def test_demo_report_with_relative_out_from_another_cwd(demo_no_train, tmp_path):
    """``latentcube demo --out demo-output`` run outside the repository: every figure in both files,
    also in Chromium, and again after the run directory is moved and re-reported."""
    figures = {"s2 true colour": "s2_true_colour.png", "class timeseries": "class_timeseries.png"}
    run = tmp_path / "copy" / "demo-output"
    shutil.copytree(demo_no_train.out, run)
    _assert_every_figure_renders(run / "report.html", run / "report.md", {k: run / v for k, v in figures.items()})
    moved = tmp_path / "moved" / "demo-output"
    shutil.move(run, moved)
    proc = subprocess.run([sys.executable, "-m", "latentcube.cli", "report", "demo-output"], cwd=moved.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _assert_every_figure_renders(moved / "report.html", moved / "report.md", {k: moved / v for k, v in figures.items()})
    res = _open_in_chromium(moved / "report.html", tmp_path)
    assert [i["alt"] for i in res["images"]] == list(figures) and res["missing"] == 0
    for img in res["images"]:
        assert img["complete"] and (img["w"], img["h"]) == _png_size(moved / figures[img["alt"]]), img


# ------------------------------------------------------------------------------------------ browser

_CHECKER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>check</title></head><body>
<pre id="result">pending</pre>
<iframe id="f" src="run/report.html" width="1000" height="700"></iframe>
<script>
// Poll instead of waiting for the iframe's load event, which can fire before a listener exists.
const frame = document.getElementById("f");
const out = document.getElementById("result");
let waited = 0;
function check() {
  const d = frame.contentDocument;
  if (!d || d.readyState !== "complete" || !d.location.href.endsWith("/run/report.html")) {
    waited += 50;
    if (waited > 4000) { out.textContent = "timeout: " + (d ? d.readyState : "no document"); return; }
    setTimeout(check, 50);
    return;
  }
  try {
    const imgs = Array.from(d.images);
    out.textContent = JSON.stringify({
      title: d.title,
      images: imgs.map((i) => {
        // Pixels as drawn by the browser: a broken or truncated PNG leaves transparent or wrong pixels.
        const c = document.createElement("canvas");
        c.width = i.naturalWidth; c.height = i.naturalHeight;
        const g = c.getContext("2d");
        g.drawImage(i, 0, 0);
        const px = i.naturalWidth ? g.getImageData(0, 0, c.width, c.height).data : [];
        const sum = [0, 0, 0, 0];
        for (let j = 0; j < px.length; j++) sum[j % 4] += px[j];
        const n = px.length / 4 || 1;
        return {alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                shown: i.getBoundingClientRect().width, mean_rgba: sum.map((v) => v / n)};
      }),
      tables: Array.from(d.querySelectorAll("table")).map((t) => ({
        caption: t.caption ? t.caption.textContent : null,
        cells: Array.from(t.rows).map((r) => Array.from(r.cells).map((c) => c.textContent))})),
      missing: d.querySelectorAll(".missing").length,
      details: d.querySelectorAll("details").length,
      resources: frame.contentWindow.performance.getEntriesByType("resource").map((e) => e.name),
    });
  } catch (err) {
    out.textContent = "error: " + err;
  }
}
check();
</script></body></html>
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def _open_in_chromium(report: Path, scratch: Path) -> dict:
    """What headless Chromium shows of ``report`` (a report.html): the checker page's JSON result.

    The checker page and the report are served over same-origin http (not file://) so the checker may
    look into the report's iframe; skips where no Chromium is installed.
    """
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome): apt-get install chromium")
    root = report.parent.parent
    rel = f"{report.parent.name}/{report.name}"
    checker_name = "check_report_page.html"
    (root / checker_name).write_text(_CHECKER.replace("run/report.html", rel), encoding="utf-8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{checker_name}"
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={scratch / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", url]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"Chromium did not finish within 90 s: {err}")
    finally:
        server.shutdown()
        server.server_close()
        (root / checker_name).unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    checker = _Doc()
    checker.feed(proc.stdout)
    result = "".join(checker.text_of.get("pre", []))
    assert result.startswith("{"), f"checker page did not finish: {result!r}; stderr: {proc.stderr[-2000:]}"
    return json.loads(result)


def test_report_renders_in_chromium(run_dir, tmp_path):
    build_report(run_dir, title="Browser check")
    res = _open_in_chromium(run_dir / "report.html", tmp_path)
    assert res["title"] == "Browser check"
    # Every figure decoded at its file's pixel size and laid out with a visible width.
    expected = {"a map": run_dir / "figs" / "map.png", "Training curves: s1": run_dir / "training_curves_s1.png",
                "observed vs predicted": run_dir / "scatter.png"}
    assert [i["alt"] for i in res["images"]] == list(expected)
    for img in res["images"]:
        assert img["complete"] and img["w"] > 0 and img["shown"] > 0, img
        assert (img["w"], img["h"]) == _png_size(expected[img["alt"]]), img
        # Mean colour of the drawn pixels against the file decoded by matplotlib (0..255 per channel).
        reference = imread(expected[img["alt"]]).reshape(-1, 4).mean(axis=0) * 255
        assert img["mean_rgba"] == pytest.approx(list(reference), abs=1.0), img
    assert [t["caption"] for t in res["tables"]] == ["cubes", "per site", "wall-clock seconds"]
    assert res["tables"][1]["cells"][2] == ["<b>XS|GR1</b>", "–", "–", "12"]
    assert res["missing"] == 1 and res["details"] == 1
    assert res["resources"] == []  # nothing fetched besides the page itself: self-contained


def test_section_links_to_files_of_the_run_render_others_stay_text(tmp_path):
    """[text](path) inside the run folder becomes a link (model cards, STAC items); a scheme or '..' does not."""
    run = tmp_path / "run"
    write_section(run, "catalogue", order=85, title="Model cards and STAC items",
                  text=["- s2: [runs/s2/MODEL_CARD.md](runs/s2/MODEL_CARD.md): 9-d",
                        "[bad](javascript:alert(1)) [up](../secret.txt)"])
    html_path, md_path = build_report(run)
    doc = _parse(html_path)
    assert "runs/s2/MODEL_CARD.md" in doc.hrefs and not any("javascript" in h or ".." in h for h in doc.hrefs)
    raw = html_path.read_text(encoding="utf-8")
    assert '<a href="runs/s2/MODEL_CARD.md">runs/s2/MODEL_CARD.md</a>' in raw and "[bad](javascript:" in raw
    assert "[runs/s2/MODEL_CARD.md](runs/s2/MODEL_CARD.md)" in md_path.read_text(encoding="utf-8")
