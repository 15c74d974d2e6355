"""``latentcube`` commands for data in: synth, info, validate, demo, import, plan, fetch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli import _table, app, console, out


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the world's cubes and FLUXNET files.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives identical data.")] = 0,
    scenes: Annotated[int | None, typer.Option("--scenes", min=1, help="Number of scene cubes (default 3).")] = None,
    scene_size: Annotated[int | None, typer.Option("--scene-size", min=16, help="Scene edge in pixels (default 128).")] = None,
    towers: Annotated[int | None, typer.Option("--towers", min=0, help="Flux-tower cubes (default 6; 0 for none).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the world's cubes if OUT already has them.")] = False,
) -> None:
    """Simulate the synthetic world (S1/S2 cubes + flux towers) and write it to OUT."""
    from latentcube.synthetic import make_world, write_world

    sizes = {k: v for k, v in dict(n_scenes=scenes, scene_size=scene_size, n_towers=towers).items() if v is not None}
    with console.status("simulating the synthetic world"):
        world = make_world(seed=seed, **sizes)
    with console.status(f"writing {len(world.cubes)} cubes to {out_dir}"):
        write_world(world, out_dir, overwrite=overwrite)
    for name in world.cubes:
        out.print(str(out_dir / f"{name}.zarr"))


@app.command()
def info(
    cube: Annotated[Path, typer.Argument(metavar="CUBE", help="A cube (*.zarr directory or *.nc file).")],
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
    cube: Annotated[Path, typer.Argument(metavar="CUBE", help="A cube (*.zarr or *.nc).")],
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
    layer: Annotated[list[str] | None, typer.Option("--layer", help="NAME=PATH[:VARIABLE] per-pixel layer (repeatable); PATH may be a glob matching one file.")] = None,
    scl_mask: Annotated[str, typer.Option(help="SCL classes to mask, comma separated.")] = "3,8,9,10",
    no_scl_mask: Annotated[bool, typer.Option("--no-scl-mask", help="Keep cloudy pixels.")] = False,
    duplicates: Annotated[str, typer.Option(help="Same-date files: error | first | mean.")] = "error",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing cube at --out (never other files).")] = False,
) -> None:
    """Import your own S2/S1 exports (openEO/CDSE, GEE/WorldCereal, NetCDF/Zarr/GeoTIFF) into a cube."""
    from latentcube.cube import default_model_bands_note, is_cube_store, save_cube
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
    for sensor, dim in (("s2", "band"), ("s1", "band_s1")):  # found out here, not at `train`
        if sensor in ds and (note := default_model_bands_note(sensor, [str(b) for b in ds[dim].values])):
            console.print(f"warning: {sensor}: {note}", markup=False, highlight=False, soft_wrap=True)


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
