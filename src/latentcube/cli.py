"""The ``latentcube`` command: a thin typer layer over library functions (no logic lives here).

Bad input prints one clear line and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
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


# ------------------------------------------------------------------------------------- commands


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the world's cubes and FLUXNET files.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives identical data.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the world's cubes if OUT already has them.")] = False,
) -> None:
    """Simulate the synthetic world (S1/S2 cubes + flux towers) and write it to OUT."""
    from latentcube.synthetic import make_world, write_world

    with console.status("simulating the synthetic world"):
        world = make_world(seed=seed)
    with console.status(f"writing {len(world.cubes)} cubes to {out_dir}"):
        write_world(world, out_dir, overwrite=overwrite)
    for name in world.cubes:
        out.print(str(out_dir / f"{name}.zarr"))


@app.command()
def info(
    cube: Annotated[Path, typer.Argument(help="A cube (*.zarr directory or *.nc file).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Dimensions, dates, valid fractions, CRS and value ranges of a cube (and whether it is valid)."""
    from latentcube.describe import cube_rows, describe_cube

    summary = describe_cube(cube)
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    out.print(_table(str(cube), cube_rows(summary)))


@app.command()
def validate(
    cube: Annotated[Path, typer.Argument(help="A cube (*.zarr or *.nc).")],
    allow_missing_s1: Annotated[bool, typer.Option("--allow-missing-s1", help="Accept S1 that covers none of the S2 dates or pixels.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Also read every chunk: exact counts of missing and impossible values.")] = False,
) -> None:
    """Check a cube against the data model; exit 1 with the problem and the fix if it is invalid."""
    from latentcube.cube import open_cube, validate_cube
    from latentcube.cube_checks import check_s1_coverage, scan_cube

    ds = open_cube(cube)
    scans = scan_cube(ds, cube if cube.is_dir() else None) if full else {}  # first: it names an undecodable chunk
    validate_cube(ds)
    if "s1" in ds:  # a cube with S1 is meant for fusion: S1 that meets no S2 date or pixel is an error
        check_s1_coverage(ds, allow_missing=allow_missing_s1, what="fusion")
    for s in scans.values():
        out.print(f"{s.variable}: {s.missing:,} of {s.values:,} values missing ({s.missing / max(s.values, 1):.1%}); "
                  f"{s.impossible_pixel_dates:,} of {s.pixel_dates:,} pixel-dates with impossible values (read as NaN)")
    out.print(f"{cube}: valid")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 0,
    no_train: Annotated[bool, typer.Option("--no-train", help="Only simulate and draw; skip training.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Override the demo configs' epochs.")] = None,
) -> None:
    """Run the end-to-end demo on the synthetic world and print where the report is."""
    from latentcube.demo import run_demo

    with console.status("demo") as status:
        def log(msg: str) -> None:
            status.update(f"demo: {msg}")
            console.log(msg)

        result = run_demo(out_dir, seed=seed, log=log, train=not no_train, epochs=epochs)
    for step, seconds in result.timings.items():
        console.print(f"  {step:<12} {seconds:6.1f} s")
    out.print(f"report: {result.report}")


@app.command("import")
def import_(
    out_path: Annotated[Path, typer.Option("--out", help="Output cube (*.zarr or *.nc).")],
    s2: Annotated[list[str], typer.Option("--s2", help="S2 file(s) or glob(s): NetCDF, Zarr or GeoTIFF (repeatable).")],
    s1: Annotated[list[str] | None, typer.Option("--s1", help="S1 file(s) or glob(s) (repeatable).")] = None,
    preset: Annotated[str | None, typer.Option(help="Known export layout: openeo | worldcereal.")] = None,
    band_map: Annotated[list[str] | None, typer.Option("--band-map", help="SOURCE=BAND, e.g. red=B04 (repeatable).")] = None,
    s2_scale: Annotated[float | None, typer.Option(help="Reflectance = DN * scale + offset.")] = None,
    s2_offset: Annotated[float | None, typer.Option()] = None,
    s2_nodata: Annotated[list[float] | None, typer.Option("--s2-nodata", help="S2 nodata value(s).")] = None,
    s1_encoding: Annotated[str | None, typer.Option(help="linear | db | openeo_uint16.")] = None,
    s1_scale: Annotated[float | None, typer.Option()] = None,
    s1_offset: Annotated[float | None, typer.Option()] = None,
    s1_nodata: Annotated[list[float] | None, typer.Option("--s1-nodata")] = None,
    time_dim: Annotated[str | None, typer.Option(help="Time dimension name (default: autodetect t/time/timestamp).")] = None,
    crs: Annotated[str | None, typer.Option(help="CRS when the files carry none, e.g. EPSG:32631.")] = None,
    date: Annotated[list[str] | None, typer.Option("--date", help="Date per GeoTIFF (repeatable).")] = None,
    band_name: Annotated[list[str] | None, typer.Option("--band-name", help="Band names of GeoTIFF bands (repeatable).")] = None,
    layer: Annotated[list[str] | None, typer.Option("--layer", help="NAME=PATH[:VARIABLE] per-pixel layer (repeatable).")] = None,
    scl_mask: Annotated[str, typer.Option(help="SCL classes to mask, comma separated.")] = "3,8,9,10",
    no_scl_mask: Annotated[bool, typer.Option("--no-scl-mask", help="Keep cloudy pixels.")] = False,
    duplicates: Annotated[str, typer.Option(help="Same-date files: error | first | mean.")] = "error",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing cube at --out (never other files).")] = False,
) -> None:
    """Import your own S2/S1 exports (openEO/CDSE, GEE/WorldCereal, NetCDF/Zarr/GeoTIFF) into a cube."""
    from latentcube.cube import is_cube_store, save_cube
    from latentcube.files import check_output_path
    from latentcube.sources.importers import import_cube, parse_band_map, parse_layers

    check_output_path(out_path, overwrite=overwrite, is_ours=is_cube_store, what="cube")  # before the slow import
    with console.status("importing"):
        ds = import_cube(
            s2, s1 or None, preset=preset, band_map=parse_band_map(band_map), s2_scale=s2_scale, s2_offset=s2_offset,
            s2_nodata=s2_nodata or None, s1_encoding=s1_encoding, s1_scale=s1_scale, s1_offset=s1_offset,
            s1_nodata=s1_nodata or None, time_dim=time_dim, crs=crs, dates=date or None, band_names=band_name or None,
            layers=parse_layers(layer), scl_mask=None if no_scl_mask else tuple(int(c) for c in scl_mask.split(",") if c.strip()),
            duplicates=duplicates,
        )
    with console.status(f"writing {out_path}"):
        save_cube(ds, out_path, overwrite=overwrite)
    out.print(f"{out_path}: {ds.sizes['time']} S2 dates, {ds.sizes.get('time_s1', 0)} S1 dates, {ds.sizes['y']}x{ds.sizes['x']} px")


@app.command()
def plan(
    landcover: Annotated[Path, typer.Option(help="Land-cover raster (ESA CCI or any GeoTIFF/NetCDF class layer).")],
    out_path: Annotated[Path, typer.Option("--out", help="Plan file (*.csv or *.geojson).")],
    bbox: Annotated[tuple[float, float, float, float] | None, typer.Option(help="W S E N in degrees.")] = None,
    n: Annotated[int, typer.Option(help="Number of sites.")] = 250,
    min_separation_km: Annotated[float, typer.Option(help="Minimum distance between sites.")] = 50.0,
    years: Annotated[tuple[int, int], typer.Option(help="First and last year of the periods.")] = (2017, 2024),
    splits: Annotated[tuple[float, float, float], typer.Option(help="Train/val/test fractions of sites.")] = (0.75, 0.17, 0.08),
    edge_m: Annotated[float, typer.Option(help="Cube edge in metres.")] = 2560.0,
    class_map: Annotated[str, typer.Option(help="esa_cci | latentcube.")] = "esa_cci",
    variable: Annotated[str | None, typer.Option(help="Variable of a NetCDF land-cover file.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Draw training sites (the paper's sampler): class mix, separation, two periods per site, splits."""
    from latentcube.sources.sites import plan_sites, write_plan

    with console.status("drawing sites"):
        table = plan_sites(str(landcover), bbox=bbox, n=n, min_separation_km=min_separation_km, years=years,
                           splits=splits, edge_m=edge_m, class_map=class_map, variable=variable, seed=seed)
    write_plan(table, out_path)
    out.print(f"{out_path}: {table['site_id'].nunique()} sites, {len(table)} cubes "
              f"({', '.join(f'{k} {v}' for k, v in table.groupby('split')['site_id'].nunique().items())} sites)")


@app.command()
def fetch(
    out_path: Annotated[Path, typer.Option("--out", help="Cube path (single area) or directory (with --plan).")],
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Site plan from `latentcube plan`.")] = None,
    center: Annotated[tuple[float, float] | None, typer.Option(help="LON LAT of the cube centre.")] = None,
    edge_m: Annotated[float | None, typer.Option(help="Cube edge in metres (with --center).")] = None,
    bbox: Annotated[tuple[float, float, float, float] | None, typer.Option(help="W S E N in degrees.")] = None,
    start: Annotated[str | None, typer.Option(help="First date (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(help="Last date (YYYY-MM-DD, inclusive).")] = None,
    crs: Annotated[str | None, typer.Option(help="Output CRS (default: the UTM zone of the centre).")] = None,
    max_cloud_cover: Annotated[float | None, typer.Option(help="Skip scenes above this cloud cover (%).")] = None,
    min_valid_fraction: Annotated[float, typer.Option(help="Drop dates with fewer valid pixels.")] = 0.0,
    mask: Annotated[str, typer.Option(help="scl | none | cloudsen12.")] = "scl",
    mask_snow: Annotated[bool, typer.Option(help="Also mask SCL snow (11).")] = False,
    cloudsen12_weights: Annotated[Path | None, typer.Option(help="Local CloudSEN12 TorchScript weights.")] = None,
    nbar: Annotated[bool, typer.Option(help="Nadir BRDF adjustment (needs latentcube[nbar]).")] = False,
    no_s1: Annotated[bool, typer.Option("--no-s1", help="Sentinel-2 only.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cube at --out; with --plan: redo finished cubes.")] = False,
    keep_going: Annotated[bool, typer.Option(help="With --plan: skip sites that fail.")] = False,
) -> None:
    """Fetch Sentinel-2 L2A + Sentinel-1 RTC from the Planetary Computer onto one 10 m grid."""
    from latentcube.cube import save_cube
    from latentcube.sources.masks import ModelMask, SCLMask
    from latentcube.sources.stac import fetch_cube, fetch_sites

    masks = {"scl": lambda: SCLMask(mask_snow=mask_snow), "none": lambda: None,
             "cloudsen12": lambda: ModelMask(weights_path=cloudsen12_weights)}
    if mask not in masks:
        raise typer.BadParameter(f"--mask must be one of {sorted(masks)}")
    kw = dict(max_cloud_cover=max_cloud_cover, mask=masks[mask](), min_valid_fraction=min_valid_fraction, nbar=nbar,
              include_s1=not no_s1)
    if plan_file is not None:
        paths = fetch_sites(plan_file, out_path, skip_existing=not overwrite, on_error="skip" if keep_going else "raise", **kw)
        out.print(f"{len(paths)} cubes in {out_path}")
        return
    if start is None or end is None:
        raise typer.BadParameter("give --start and --end (or --plan)")
    from latentcube.cube import is_cube_store
    from latentcube.files import check_output_path

    check_output_path(out_path, overwrite=overwrite, is_ours=is_cube_store, what="cube")  # before the download
    ds = fetch_cube(center=center, edge_m=edge_m, bbox=bbox, start=start, end=end, crs=crs, **kw)
    with console.status(f"downloading and writing {out_path}"):
        save_cube(ds, out_path, overwrite=overwrite)
    out.print(f"{out_path}: {ds.sizes['time']} S2 dates, {ds.sizes.get('time_s1', 0)} S1 dates")


@app.command("model-info")
def model_info_(
    checkpoint: Annotated[Path | None, typer.Argument(help="A model file (model.pt). Omit to describe a preset.")] = None,
    sensor: Annotated[str, typer.Option(help="Preset when no checkpoint: s1 | s2 | fused | all.")] = "all",
    no_flops: Annotated[bool, typer.Option("--no-flops", help="Skip the FLOP count.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Parameters, FLOPs per embedding and latent sizes of a checkpoint (or of the default models)."""
    from latentcube.describe import checkpoint_lines, describe_models, model_rows

    report = describe_models(checkpoint, sensor=sensor, flops=not no_flops)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    out.print(_table("latentcube models", model_rows(report), header=(
        "model", "parameters (trainable)", "latent sizes", "FLOPs/embedding dense", "FLOPs/embedding per-patch")))
    for line in checkpoint_lines(report):
        out.print(line)


@app.command()
def train(
    stage: Annotated[str, typer.Argument(help="s1 | s2 | fusion")],
    config: Annotated[Path, typer.Option("--config", help="Stage YAML (see configs/).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Override the config's out_dir.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (e.g. 2); default from config.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu | gpu | auto.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override trainer.max_steps.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Only index the data: print patches per split and stop.")] = False,
) -> None:
    """Train one stage; re-running the same command resumes from the last checkpoint."""
    from dataclasses import replace

    from latentcube.train import check_data, load_train_config, run_training

    cfg = load_train_config(config)
    if cfg.stage != stage:
        raise typer.BadParameter(f"{config} is a {cfg.stage!r} config, not {stage!r}")
    trainer_changes = {k: v for k, v in dict(devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator,
                                              max_epochs=max_epochs, max_steps=max_steps).items() if v is not None}
    cfg = replace(cfg, trainer=replace(cfg.trainer, **trainer_changes))
    if out_dir is not None:
        cfg = replace(cfg, out_dir=str(out_dir))
    if check:  # the split sizes a run would see and the band check, without training
        for split, n in check_data(cfg).items():
            where = "strips of " if n["strips"] else ""
            out.print(f"{split}: {n['patches']} patches from {where}{n['cubes']} cube(s) ({n['rejected']} candidates rejected)")
        return
    summary = run_training(cfg)
    if "model" in summary:
        out.print(f"model: {summary['model']}")
        for k, v in (summary.get("test_metrics") or {}).items():
            if isinstance(v, float):
                out.print(f"  {k}: {v:.5g}")


@app.command()
def embed(
    cube: Annotated[Path, typer.Argument(help="A cube (*.zarr or *.nc).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model file from training (model.pt): fusion or autoencoder.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output Zarr store; re-running the same command resumes it.")],
    block_px: Annotated[int, typer.Option("--block-px", help="Block edge in pixels: unit of parallelism, resume and storage chunks.")] = 256,
    dtype: Annotated[str, typer.Option(help="float32 | float16 (relative error <= 4.9e-4) | int8 (per pixel-date scale, error <= scale/2); read any with latentcube.embed.open_embedding.")] = "float32",
    quality: Annotated[bool, typer.Option("--quality/--no-quality", help="Also write quality_s2/quality_s1 (time, y, x): centre-pixel reconstruction error (reflectance / dB); ~10x the embedding cost on CPU.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address (tcp://host:8786) or 'synchronous'; default: a local cluster, or this process when that would have one worker (a GPU, under 4 cores) or one block is left.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Local-cluster workers (default: one per 2 CPU cores within 80 % of the free memory, 1 with a GPU).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads per worker (default: the cores over the workers).")] = None,
    sensors: Annotated[str | None, typer.Option(help="Comma-separated: fused,s1,s2 (default: fused; an autoencoder's own sensor).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda | cpu (default: cuda when available).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start again instead of resuming an existing output.")] = False,
    allow_missing_s1: Annotated[bool, typer.Option("--allow-missing-s1", help="Embed with a fusion model although S1 covers none of the cube (S1 then counts as absent).")] = False,
) -> None:
    """Embed every pixel and date of CUBE (Zarr embedding cube, resumable, parallel over blocks)."""
    from latentcube.embed import embed_cube

    chosen = [s.strip() for s in sensors.split(",") if s.strip()] if sensors else None
    path = embed_cube(cube, checkpoint, out_path, block_px=block_px, dtype=dtype, quality=quality, scheduler=scheduler,
                      n_workers=workers, threads_per_worker=threads, sensors=chosen, device=device, overwrite=overwrite,
                      allow_missing_s1=allow_missing_s1)
    out.print(str(path))


@app.command("plot-training")
def plot_training_(
    run: Annotated[Path, typer.Argument(help="A training output directory (has metrics.csv).")],
    out_path: Annotated[Path | None, typer.Option("--out", help="PNG path (default RUN/training_curves.png).")] = None,
) -> None:
    """Draw train/validation curves of every loss part (the paper's Fig. 5)."""
    from latentcube.evaluate.curves import plot_training

    out.print(str(plot_training(run, out_path)))


@app.command()
def gapfill(
    emb: Annotated[Path, typer.Argument(help="An embedding cube (Zarr from `latentcube embed`).")],
    out_path: Annotated[Path, typer.Option("--out", help="Output Zarr store (gap-filled cube).")],
    freq: Annotated[str, typer.Option(help="Target axis: 1D, 5D, ... or 'none' to keep the input dates.")] = "5D",
    method: Annotated[str, typer.Option(help="linear | savgol (Savitzky-Golay on a daily grid).")] = "linear",
    max_gap_days: Annotated[float | None, typer.Option("--max-gap-days", help="Fill a day only if the observations around it are at most this many days apart.")] = 30.0,
    savgol_window_days: Annotated[int, typer.Option("--savgol-window-days", help="Savitzky-Golay window in days (odd).")] = 31,
    savgol_order: Annotated[int, typer.Option("--savgol-order", help="Savitzky-Golay polynomial order.")] = 2,
    start: Annotated[str | None, typer.Option(help="First target day YYYY-MM-DD (default: first input date).")] = None,
    end: Annotated[str | None, typer.Option(help="Last target day YYYY-MM-DD (default: last input date).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output store.")] = False,
) -> None:
    """Fill missing pixel-dates along time and resample to a regular axis (flag variable `filled`)."""
    from latentcube.gapfill import gapfill_embeddings

    gapfill_embeddings(emb, out_path, freq=None if freq.lower() == "none" else freq, method=method,
                       max_gap_days=max_gap_days, savgol_window_days=savgol_window_days, savgol_order=savgol_order,
                       start=start, end=end, overwrite=overwrite)
    out.print(str(out_path))


@app.command()
def pca(
    emb: Annotated[Path, typer.Argument(help="An embedding cube (Zarr).")],
    out_path: Annotated[Path, typer.Option("--out", help="PNG path for the figure.")],
    date: Annotated[str | None, typer.Option(help="YYYY-MM-DD of an embedding date (default: the one with most valid pixels).")] = None,
    cube: Annotated[Path | None, typer.Option(help="The S2 cube (default: the embedding's source_cube attribute).")] = None,
    sample: Annotated[int, typer.Option(help="Pixel-dates sampled to fit the PCA.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
) -> None:
    """First three principal components as RGB beside the S2 true colour of the same date (paper Fig. 6)."""
    from latentcube.evaluate.maps import pca_figure

    path = pca_figure(emb, cube, date, out_path, sample=sample, seed=seed)
    out.print(str(path))


@app.command()
def export(
    emb: Annotated[Path, typer.Argument(help="An embedding cube (Zarr), gap-filled or not.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder for the files.")],
    fmt: Annotated[str, typer.Option("--format", help="Output format (geotiff).")] = "geotiff",
    dates: Annotated[str | None, typer.Option(help="Comma-separated YYYY-MM-DD dates (default: all).")] = None,
    variable: Annotated[str, typer.Option(help="Variable to export (embedding, quality_s2, filled, ...).")] = "embedding",
    prefix: Annotated[str | None, typer.Option(help="File-name prefix (default: the variable name).")] = None,
) -> None:
    """One GeoTIFF per date (bands = features, CRS and transform of the cube, NaN nodata)."""
    from latentcube.export import export_geotiff

    if fmt.lower() not in ("geotiff", "gtiff", "tif"):
        raise typer.BadParameter(f"--format {fmt!r}: only 'geotiff' is supported")
    chosen = [d.strip() for d in dates.split(",") if d.strip()] if dates else None
    paths = export_geotiff(emb, out_dir, variable=variable, dates=chosen, prefix=prefix)
    out.print(f"{len(paths)} files in {out_dir}")


@app.command()
def aggregate(
    emb: Annotated[Path, typer.Argument(help="An embedding cube (Zarr), gap-filled or not.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output Zarr store (one time step per window).")],
    windows: Annotated[list[str], typer.Option("--windows", help="Presets season (Apr-Sep), quarter, month, year, hydro-year (Jul-Jun) and/or YYYY-MM-DD/YYYY-MM-DD; repeatable or comma-separated.")],
    stat: Annotated[list[str] | None, typer.Option("--stat", help="mean, median or pNN (e.g. p90); repeatable or comma-separated; the first is 'embedding'.")] = None,
    filled: Annotated[bool, typer.Option("--filled", help="Aggregate the gap-filled series (gapfill defaults: linear, 5D, 30 days).")] = False,
    empty: Annotated[str, typer.Option(help="A window with no date of the store: error | nan (kept, valid_count 0).")] = "error",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing window store.")] = False,
) -> None:
    """Per-pixel statistics of the embeddings over date windows (seasons, quarters, ...), with valid_count."""
    from latentcube.aggregate import aggregate_embeddings

    aggregate_embeddings(emb, out_path, windows=windows, stats=stat or ["mean"], filled=filled, empty=empty,
                         overwrite=overwrite)
    out.print(str(out_path))


@app.command()
def sample(
    emb: Annotated[Path, typer.Argument(help="An embedding cube (Zarr): embed, gapfill or aggregate output.")],
    points: Annotated[Path, typer.Option("--points", help="Points or polygons: GeoJSON, CSV (lon/lat, or x/y with --crs), GeoParquet or shapefile.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output table: .parquet (GeoParquet) or .csv.")],
    series: Annotated[bool, typer.Option("--series", help="Every date of the store (per-date, gap-filled or window series).")] = False,
    date: Annotated[list[str] | None, typer.Option("--date", help="YYYY-MM-DD date to take (repeatable or comma-separated).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="long (a row per point and date) | wide (a row per point).")] = "long",
    crs: Annotated[str | None, typer.Option(help="CRS of the points when the file has none (e.g. EPSG:32632).")] = None,
    outside: Annotated[str, typer.Option(help="Points outside the store: error | drop | nan.")] = "error",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output table.")] = False,
) -> None:
    """The embedding at points (the pixel holding each) or polygon means, as GeoParquet or CSV."""
    from latentcube.sample_points import sample_embeddings

    dates = [d.strip() for part in date or [] for d in part.split(",") if d.strip()] or None
    table = sample_embeddings(emb, points, out_path, series=series, dates=dates, fmt=fmt, crs=crs, outside=outside,
                              overwrite=overwrite)
    out.print(f"{len(table)} rows in {out_path}")


# -------------------------------------------------------------------------------------- evaluation

evaluate_app = typer.Typer(help="Downstream evaluation of embedding cubes (GPP, land-cover probe).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
sweep_app = typer.Typer(help="Sensitivity studies (retrain with several settings, compare).", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

@evaluate_app.command("gpp")
def evaluate_gpp_(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Fusion model file (runs/fusion/model.pt).")],
    sites: Annotated[Path, typer.Option("--sites", help="Site table (towers.csv: site_id, cube, row, col, veg_type) or a site plan.")],
    fluxnet: Annotated[Path, typer.Option("--fluxnet", help="Folder with FLX_<SITE>_*.csv files (DD, HH or HR).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory: writes OUT/evaluation/gpp/ and the report section.")],
    cubes: Annotated[Path | None, typer.Option("--cubes", help="Folder with the site cubes <cube>.zarr.")] = None,
    radius: Annotated[int, typer.Option("--radius", help="Footprint half-width in pixels ((2r+1)^2 px site mean).")] = 3,
    weights: Annotated[str, typer.Option(help="Footprint weights: uniform | gaussian.")] = "uniform",
    window: Annotated[int, typer.Option("--window", help="Input window length in days.")] = 90,
    stride: Annotated[int, typer.Option("--stride", help="Days between window starts.")] = 10,
    max_gap: Annotated[int, typer.Option("--max-gap", help="Longest gap (days) bridged by the daily interpolation.")] = 60,
    train_years: Annotated[str, typer.Option("--train-years", help="Year split: training years, comma-separated.")] = "2017,2018,2019",
    test_years: Annotated[str, typer.Option("--test-years", help="Year split: test years, comma-separated.")] = "2020",
    protocols: Annotated[str, typer.Option(help="Comma-separated: year,loso.")] = "year,loso",
    methods: Annotated[str | None, typer.Option(help="Comma-separated: embedding,bands,ndvi,annual_embedding,climatology and, "
        "with --meteo, meteo,embedding_meteo,bands_meteo,ndvi_meteo (default: all that apply).")] = None,
    meteo: Annotated[str | None, typer.Option("--meteo", help="Daily drivers from the tower files beside the inputs, "
        "e.g. sw_in,ta,vpd (adds meteo only and <input> + meteo).")] = None,
    flux_columns: Annotated[str | None, typer.Option("--flux-columns", help="Tower-file column names: a preset "
        "(fluxnet2015, eth, reddyproc) and/or key=column items, e.g. eth,ta=TA_T1_47_1.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Also score these window lengths (year split), e.g. 60,75,90,105,120.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the regressors and the early-stopping split.")] = 0,
    device: Annotated[str | None, typer.Option(help="cuda | cpu (default: cuda when available).")] = None,
) -> None:
    """Predict daily GPP at flux towers from per-date embeddings, against four baselines (paper §IV-C)."""
    from latentcube.evaluate.gpp import GPPConfig, evaluate_gpp

    cfg = GPPConfig(radius_px=radius, weights=weights, window_days=window, stride_days=stride, max_gap_days=max_gap,
                    train_years=_items(train_years, int), test_years=_items(test_years, int), protocols=_items(protocols),
                    methods=_items(methods) if methods else None, meteo=_items(meteo) if meteo else (),
                    flux_columns=flux_columns, sweep_windows=_items(sweep, int) if sweep else (), seed=seed, device=device)
    doc = evaluate_gpp(sites, out_dir, checkpoint=checkpoint, cubes=cubes, fluxnet=fluxnet, config=cfg,
                       log=lambda m: console.print(m, highlight=False))
    scores = {p: v["scores"] for p, v in doc["protocols"].items()}
    rows = [(m, *[f"{scores[p][m]['overall']['nrmse']:.3f}" for p in scores]) for m in next(iter(scores.values()))]
    out.print(_table("GPP NRMSE (RMSE / observed range), all sites", rows, header=("method", *scores)))
    out.print(str(Path(out_dir) / "evaluation" / "gpp"))


@evaluate_app.command("probe")
def evaluate_probe(
    embedding: Annotated[Path, typer.Argument(help="Embedding cube (Zarr from `latentcube embed`); with --seeds also a path with {seed} or a folder of seed<N>/ runs.")],
    cube: Annotated[Path, typer.Option("--cube", help="The cube the embedding was computed from (raw bands, label layer).")],
    labels: Annotated[str, typer.Option("--labels", help="(y, x) integer label layer of the cube; 0 = unlabelled.")] = "landcover",
    date: Annotated[str | None, typer.Option("--date", help="Probe date YYYY-MM-DD (default: clearest growing-season date).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory: writes evaluation/probe/ and the report section.")] = None,
    block_px: Annotated[int, typer.Option("--block-px", help="Edge of the cross-validation blocks in pixels.")] = 16,
    folds: Annotated[int, typer.Option("--folds", help="Blocked cross-validation folds.")] = 5,
    features: Annotated[str | None, typer.Option("--features", help="Embedding feature group: fused, s1, s2 (default: the first).")] = None,
    protocols: Annotated[str, typer.Option("--protocols", help="Temporal protocols, comma separated: date, seasonal, series, mean.")] = "date,seasonal,mean",
    sources: Annotated[str, typer.Option("--sources", help="Feature sources, comma separated: embedding, raw, pca.")] = "embedding,raw,pca",
    windows: Annotated[str, typer.Option("--windows", help="Seasonal windows: a number of equal windows over the probe year, or START:END,START:END...")] = "3",
    classifiers: Annotated[str, typer.Option("--classifiers", help="Comma separated: logreg, knn.")] = "logreg,knn",
    pca_fit: Annotated[Path | None, typer.Option("--pca-fit", help="Cube the PCA code is fitted on (the training cube; default --cube).")] = None,
    pca_holdout: Annotated[float | None, typer.Option("--pca-holdout", help="Fit the PCA on the training strip only: the share held out as data.spatial_split {val: F}.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the pixel subset.")] = 0,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Repeat over seeds, e.g. 0,1,2: mean ± sd over models per seed or over CV shuffles.")] = None,
) -> None:
    """Probe: logistic regression and k-NN on embeddings vs raw bands vs a PCA code, spatially blocked CV."""
    from latentcube.evaluate.probe import parse_seeds, ratios, run_probe

    sets = [f"{s}_{p}" for p in _items(protocols) for s in _items(sources)]
    win: int | list[str] = int(windows) if windows.strip().isdigit() else list(_items(windows))
    table = run_probe(str(embedding) if "{seed}" in str(embedding) else embedding, cube, labels=labels, date=date,
                      block_px=block_px, folds=folds, seed=seed, seeds=parse_seeds(seeds), feature_sets=sets,
                      classifiers=list(_items(classifiers)), windows=win, embedding_features=features, pca_fit=pca_fit,
                      pca_spatial_split={"val": pca_holdout} if pca_holdout else None, run_dir=out_dir)
    s = table.attrs["probe"]
    over = f"{len(s['seeds'])} seeds" if s.get("seeds_over") else "folds"
    wide = table.pivot_table(index=["features", "classifier"], columns="metric", values=["mean", "std"], sort=False)
    n_feat = table.groupby(["features", "classifier"], sort=False)["n_features"].first()
    rows = [(fs, clf, str(n_feat[(fs, clf)]), *[f"{r[('mean', m)]:.3f} ± {r[('std', m)]:.3f}" for m in ("balanced_accuracy", "macro_f1")])
            for (fs, clf), r in wide.iterrows()]
    out.print(_table(f"probe `{labels}`, one date {s['date']}: {s['n_pixels']} pixels, {len(s['classes'])} classes, "
                     f"{s['folds']} blocked folds, mean ± sd over {over}", rows,
                     header=("features", "classifier", "n feat.", "balanced accuracy", "macro F1")))
    for clf, v in ratios(table).items():
        out.print(f"one-date embedding / raw bands, {clf}: {v:.1%}")
    if out_dir is not None:
        out.print(str(Path(out_dir) / "evaluation" / "probe" / "probe.json"))


@sweep_app.command("alpha")
def sweep_alpha(
    config: Annotated[Path, typer.Option("--config", help="Stage-1 training config (s2 or s1), e.g. runs/s2/config.yaml of a demo run.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (runs/, sweep.json, sweep.csv, report section).")],
    alphas: Annotated[str | None, typer.Option("--alphas", help="Comma-separated α set as both spatial and temporal decay.")] = None,
    alpha_s: Annotated[str | None, typer.Option("--alpha-s", help="Comma-separated spatial decays (grid with --alpha-t).")] = None,
    alpha_t: Annotated[str | None, typer.Option("--alpha-t", help="Comma-separated temporal decays (grid with --alpha-s).")] = None,
    reference: Annotated[float, typer.Option("--reference", help="Fixed α (both decays) scoring context MAE across runs.")] = 1.0,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", help="Override the config's epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Override the config's step limit.")] = None,
    labels: Annotated[str, typer.Option("--labels", help="Label layer of the validation cube(s) for the probe.")] = "landcover",
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Embed the validation cube(s) and probe the labels.")] = True,
) -> None:
    """Context-decay sweep: train the autoencoder per α; centre/context MAE (fixed reference weights) and probe accuracy."""
    from latentcube.evaluate.sweep import parse_floats, run_sweep

    table = run_sweep(config, out_dir, alphas=parse_floats(alphas, what="--alphas"),
                      alpha_s=parse_floats(alpha_s, what="--alpha-s"), alpha_t=parse_floats(alpha_t, what="--alpha-t"),
                      reference=(reference, reference), max_epochs=max_epochs, max_steps=max_steps, probe=probe, labels=labels)
    probes = [c for c in table.columns if c.startswith("probe_")]
    rows = [(f"{r.alpha_s:g}", f"{r.alpha_t:g}", f"{r.objective_own:.4f}", f"{r.center_mae:.4f}", f"{r.context_mae_ref:.4f}",
             *[f"{getattr(r, c):.3f}" for c in probes]) for r in table.itertuples()]
    out.print(_table(f"context-decay sweep (MAE normalised; context MAE with α = {reference:g} weights)", rows,
                     header=("α_s", "α_t", "own objective", "centre MAE", "context MAE", *[c.removeprefix("probe_") for c in probes])))
    out.print(str(Path(out_dir) / "sweep.json"))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (the --out folder of `latentcube demo`).")],
    title: Annotated[str | None, typer.Option(help="Page title (default: 'latentcube report: <folder name>').")] = None,
) -> None:
    """Build RUN_DIR/report.html (one self-contained page) and report.md from the run's configs, curves and sections."""
    from latentcube.report import build_report

    for path in build_report(run_dir, title=title):
        out.print(str(path))


# ------------------------------------------------------------------------------------ entry point


def _items(text: str, kind: type = str) -> tuple:
    """A comma-separated option as its non-empty items (converted by ``kind``)."""
    return tuple(kind(t.strip()) for t in text.split(",") if t.strip())


def _table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> Table:
    table = Table(title=title, show_header=header is not None)
    for col in header or ("", ""):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def _fail(exc: BaseException, hint: bool) -> None:
    console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True)
    if hint:
        console.print("(run with --debug for the traceback)", style="dim")
    sys.exit(1)


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


if __name__ == "__main__":
    main()
