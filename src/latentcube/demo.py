"""The end-to-end demo on the embedded synthetic world (``latentcube demo``).

Each stage of the pipeline adds its step here; the CLI only calls :func:`run_demo`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from latentcube import __version__
from latentcube.cube import cube_summary, validate_cube
from latentcube.plots import class_timeseries, plot_class_timeseries, save_true_colour

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and how long each step took (seconds)."""

    out_dir: Path
    report: Path
    figures: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _noop(_message: str) -> None:
    return None


def run_demo(out_dir: str | Path, *, seed: int = 0, log: Callable[[str], None] = _noop) -> DemoResult:
    """Make the synthetic world, validate it, write it and its quick looks and a Markdown report.

    Args:
        out_dir: output directory (created); cubes go to ``out_dir/world``.
        seed: seed of the synthetic world.
        log: called with a one-line message as each step starts (the CLI shows them).
    """
    from latentcube.synthetic import make_world, write_world

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    figures: list[Path] = []

    log("simulating the synthetic world")
    t0 = time.perf_counter()
    world = make_world(seed=seed)
    timings["synthesise"] = time.perf_counter() - t0

    log(f"validating {len(world.cubes)} cubes")
    t0 = time.perf_counter()
    for cube in world.cubes.values():
        validate_cube(cube)
    timings["validate"] = time.perf_counter() - t0

    log("writing cubes and FLUXNET files")
    t0 = time.perf_counter()
    write_world(world, out_dir / "world")
    timings["write"] = time.perf_counter() - t0

    log("drawing quick looks")
    t0 = time.perf_counter()
    scene_name = next(iter(world.cubes))
    scene = world.cubes[scene_name]
    figures.append(save_true_colour(scene, out_dir / "s2_true_colour.png", title=scene_name))
    figures.append(plot_class_timeseries(scene, out_dir / "class_timeseries.png", title=scene_name))
    timings["plots"] = time.perf_counter() - t0

    report = out_dir / "report.md"
    report.write_text(_report(world, scene_name, figures, timings), encoding="utf-8")
    return DemoResult(out_dir=out_dir, report=report, figures=figures, timings=timings)


def _report(world, scene_name: str, figures: list[Path], timings: dict[str, float]) -> str:
    lines = [
        "# latentcube demo",
        "",
        f"latentcube {__version__}; synthetic world with {len(world.cubes)} cubes and {len(world.towers)} flux towers.",
        "",
        "## Cubes",
        "",
        "| cube | size (y×x) | S2 dates | S1 dates | mean valid S2 fraction | period |",
        "|---|---|---|---|---|---|",
    ]
    for name, ds in world.cubes.items():
        info = cube_summary(ds)
        s1 = info.get("s1", {}).get("dates", 0)
        lines.append(
            f"| {name} | {ds.sizes['y']}×{ds.sizes['x']} | {info['s2']['dates']} | {s1} | "
            f"{info['s2']['valid_fraction_mean']:.2f} | {info['s2']['first']} – {info['s2']['last']} |"
        )
    series = class_timeseries(world.cubes[scene_name])
    ndvi = series["ndvi"]
    lines += [
        "",
        f"## Phenology of `{scene_name}`",
        "",
        "| class | NDVI June–August | NDVI December–February | mean VV (dB) |",
        "|---|---|---|---|",
    ]
    summer = ndvi[ndvi.index.month.isin([6, 7, 8])].mean()
    winter = ndvi[ndvi.index.month.isin([12, 1, 2])].mean()
    vv = series["vv_db"].mean() if "vv_db" in series else None
    for cls in ndvi.columns:
        vv_txt = f"{vv[cls]:.1f}" if vv is not None else "–"
        lines.append(f"| {cls} | {summer[cls]:.2f} | {winter[cls]:.2f} | {vv_txt} |")
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    lines += ["", "## Timings (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"
