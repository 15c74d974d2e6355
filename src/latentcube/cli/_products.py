"""``latentcube`` commands for embedding products: gapfill, pca, export, aggregate, sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli import app, out


@app.command()
def gapfill(
    emb: Annotated[Path, typer.Argument(metavar="EMB", help="An embedding cube (Zarr from `latentcube embed`).")],
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
    emb: Annotated[Path, typer.Argument(metavar="EMB", help="An embedding cube (Zarr).")],
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
    emb: Annotated[Path, typer.Argument(metavar="EMB", help="An embedding cube (Zarr), gap-filled or not.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder for the files.")],
    fmt: Annotated[str, typer.Option("--format", help="geotiff | cog (cloud-optimised GeoTIFF with overviews).")] = "geotiff",
    dates: Annotated[str | None, typer.Option(help="Comma-separated YYYY-MM-DD dates (default: all).")] = None,
    variable: Annotated[str, typer.Option(help="Variable to export (embedding, quality_s2, filled, ...).")] = "embedding",
    prefix: Annotated[str | None, typer.Option(help="File-name prefix (default: the variable name).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 | float64 (NaN nodata) | int8 (scale/offset per band, nodata -128); default: int8 for an int8 store, else float32.")] = None,
) -> None:
    """One GeoTIFF or COG per date or window (bands = features, CRS and transform of the cube, nodata)."""
    import warnings

    from latentcube.export import NoValidPixelWarning, export_geotiff

    if fmt.lower() not in ("geotiff", "gtiff", "tif", "cog"):
        raise typer.BadParameter(f"--format {fmt!r}: use 'geotiff' or 'cog'")
    chosen = [d.strip() for d in dates.split(",") if d.strip()] if dates else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoValidPixelWarning)  # said once, in the summary below
        paths = export_geotiff(emb, out_dir, variable=variable, dates=chosen, prefix=prefix, dtype=dtype,
                               cog=fmt.lower() == "cog")
    out.print(f"{len(paths)} files in {out_dir}" + (f"; {paths.empty_message}" if paths.empty else ""))


@app.command()
def aggregate(
    emb: Annotated[Path, typer.Argument(metavar="EMB", help="An embedding cube (Zarr), gap-filled or not.")],
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
    emb: Annotated[Path, typer.Argument(metavar="EMB", help="An embedding cube (Zarr): embed, gapfill or aggregate output.")],
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
