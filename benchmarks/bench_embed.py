"""End-to-end ``embed_cube`` throughput and peak memory on synthetic cubes of growing size.

For each ``--sizes`` N it builds (once, cached in ``--workdir``) a synthetic N x N cube with one year of
Sentinel-2 (~73 dates, 10 bands) and Sentinel-1 (~61 dates, VV/VH) by tiling a 128 x 128 scene of
``latentcube.synthetic`` (the generator's full physics at 1024 px would need ~3 GB in memory; tiles
keep it bounded, and throughput does not depend on the landscape), then runs ``embed_cube`` in a fresh
child process (``embed_cube``'s default scheduler, as ``latentcube embed`` uses it: a LocalCluster of one
worker per two cores, or the child itself where that is one worker, e.g. on 2 cores, or the cube is a
single block) and reports:

* pixel-dates = N^2 x S2 dates, the seconds of the ``embed_cube`` call (reading the cube, preprocessing,
  encoding, writing the Zarr, cluster start-up and model loading included), pixel-dates/s;
* CPU seconds of the whole process tree (``RUSAGE_CHILDREN``) and pixel-dates per CPU second (less
  sensitive to other jobs on a shared machine than wall time);
* peak RSS of the whole process tree (the child, its Dask workers and helpers, summed at the same
  instant, sampled every 0.1 s with psutil, /proc when psutil is missing; shared library pages count
  once per process, so this over-states the physical memory a little), and the largest single
  process's peak RSS;
* the ratio of the peak tree RSS of the largest to the smallest size (memory is bounded by the block,
  not the cube: it should stay near 1);
* "valid": the share of pixel-dates with an embedding (centre pixel valid on that date; the synthetic
  year has realistic clouds, ~31 % valid). The encoders skip targets whose centre is invalid where a
  whole pixel chunk is (cloudy dates), so a cloud-free cube of the same size takes longer.

The model is the full-size fusion model (``s2_config()``, ``s1_config()``, ``FusionConfig()``) with
random, seeded weights unless ``--checkpoint`` is given: throughput does not depend on the weights.

    python benchmarks/bench_embed.py                          # 1024 and 512 (issue 7 targets)
    python benchmarks/bench_embed.py --sizes 256 128 --out /tmp/bench_embed.json
    python benchmarks/bench_embed.py --sizes 256 --quality    # with the quality layer
    python benchmarks/bench_embed.py --sizes 256 --blank-dates 0.5   # half the S2 dates wholly NaN
    python benchmarks/bench_embed.py --sizes 256 --zarr-format 2 3 2 3   # Zarr format 2 vs v3, alternated

``--zarr-format`` writes the cube and the embedding store in that Zarr format (``latentcube.stores.ZARR_FORMAT``;
3, the default, is what latentcube writes; 2 is what it wrote before 2026-12-07: unsharded chunks); several
values run one after the other, per size.

Targets (issue 7, 2 CPU cores): >= 50,000 pixel-dates/s end to end and peak RSS <= 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 1024**3
BASE_SCENE_PX = 128


# ------------------------------------------------------------------------------------------ inputs


def build_cube(size: int, path: Path, year: int = 2019, seed: int = 0, blank_dates: float = 0.0) -> Path:
    """A ``size`` x ``size`` cube tiled from one 128-px synthetic scene (lazy Dask tiling, chunked write).

    ``blank_dates``: share of the S2 dates (seeded choice) set to NaN everywhere, as in masked real exports
    that keep wholly cloudy acquisitions (16 of the 19 dates of the openEO sample in ../shared/data).
    """
    import dask.array as da
    import numpy as np
    import xarray as xr

    from latentcube.cube import save_cube
    from latentcube.synthetic import make_world

    if path.exists():
        return path
    world = make_world(seed, n_scenes=1, n_towers=0, scene_size=BASE_SCENE_PX, scene_years=(year,))
    base = next(iter(world.cubes.values()))
    if blank_dates:
        n_time = base.sizes["time"]
        gone = np.random.default_rng(seed).choice(n_time, round(blank_dates * n_time), replace=False)
        base["s2"] = base["s2"].where(~base["time"].isin(base["time"].values[gone]))
    reps = -(-size // BASE_SCENE_PX)

    def tiled(var: xr.DataArray) -> xr.DataArray:
        arr = da.from_array(var.values, chunks=var.shape)
        rows = [da.concatenate([arr] * reps, axis=-1) for _ in range(reps)]
        big = da.concatenate(rows, axis=-2)[..., :size, :size]
        return xr.DataArray(big, dims=var.dims, attrs=var.attrs)

    dx = float(base["x"][1] - base["x"][0])
    dy = float(base["y"][1] - base["y"][0])
    coords = {
        "x": float(base["x"][0]) + dx * np.arange(size),
        "y": float(base["y"][0]) + dy * np.arange(size),
        **{c: base[c] for c in ("time", "time_s1", "band", "band_s1", "spatial_ref") if c in base.coords},
    }
    ds = xr.Dataset({name: tiled(base[name]) for name in base.data_vars if {"y", "x"} <= set(base[name].dims)},
                    coords=coords, attrs=base.attrs)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_cube(ds, tmp)
    os.replace(tmp, path)
    return path


def build_model(path: Path, seed: int = 0) -> Path:
    """The full-size fusion model with random, seeded weights, saved as a model file."""
    import torch

    from latentcube.nn import FusionConfig, FusionModel, SensorAutoencoder, s1_config, s2_config
    from latentcube.preprocess import Normalization
    from latentcube.train import save_model

    if path.exists():
        return path
    torch.manual_seed(seed)
    s1, s2 = SensorAutoencoder(s1_config()).eval(), SensorAutoencoder(s2_config()).eval()
    fused = FusionModel({"s1": s1, "s2": s2}, FusionConfig()).freeze_sensor_models().eval()
    return save_model(path, fused, normalization=Normalization())


# ------------------------------------------------------------------------------------------ memory


def _tree_rss_psutil(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            out.append(p.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return out


def _tree_rss_proc(pid: int) -> list[int]:
    """VmRSS of ``pid`` and each of its descendants, from /proc (no psutil)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    out = []
    for p in tree:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) * 1024)
        except OSError:
            pass
    return out


class TreeMemory:
    """Peak of the summed RSS of a process and all its descendants (``peak``) and the largest single
    process's RSS (``peak_process``), sampled in a background thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        try:
            import psutil  # noqa: F401

            self._rss = _tree_rss_psutil
            self.method = "psutil"
        except ImportError:
            self._rss = _tree_rss_proc
            self.method = "/proc"
        self.pid, self.interval, self.peak, self.peak_process, self.n_processes = pid, interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._rss(self.pid)
            if rss:
                self.peak = max(self.peak, sum(rss))
                self.peak_process = max(self.peak_process, max(rss))
                self.n_processes = max(self.n_processes, len(rss))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# ------------------------------------------------------------------------------------------- runs


def _child(args: argparse.Namespace) -> None:
    """Runs in the measured process: one ``embed_cube`` call, its seconds as JSON on the last line."""
    import xarray as xr

    import latentcube.stores
    from latentcube.embed import embed_cube

    latentcube.stores.ZARR_FORMAT = args.zarr_format[0]
    t0 = time.perf_counter()
    embed_cube(args.cube, args.checkpoint, args.emb, block_px=args.block_px, dtype=args.dtype, quality=args.quality,
               n_workers=args.workers, threads_per_worker=args.threads, scheduler=args.scheduler, progress=False,
               processes=not args.threaded,
               overwrite=True, tile=int(args.tile) if args.tile not in (None, "auto") else "auto")
    seconds = time.perf_counter() - t0
    ds = xr.open_zarr(args.emb)
    print(json.dumps({"seconds": seconds, "n_time": int(ds.sizes["time"]), "height": int(ds.sizes["y"]),
                      "width": int(ds.sizes["x"]), "n_feature": int(ds.sizes["feature"])}))


def run_one(size: int, args: argparse.Namespace, model: Path, zarr_format: int = 3) -> dict:
    import latentcube.stores

    name = f"cube_{size}" + (f"_blank{args.blank_dates:g}" if args.blank_dates else "") + f"_zarr{zarr_format}"
    latentcube.stores.ZARR_FORMAT = zarr_format  # the cube (cached per format) as the store
    cube = build_cube(size, args.workdir / f"{name}.zarr", blank_dates=args.blank_dates)
    emb = args.workdir / f"emb_{size}.zarr"
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", "--cube", str(cube), "--checkpoint", str(model),
           "--emb", str(emb), "--block-px", str(args.block_px), "--dtype", args.dtype, "--zarr-format", str(zarr_format)]
    if args.quality:
        cmd.append("--quality")
    if args.threaded:
        cmd.append("--threaded")
    for flag, value in (("--workers", args.workers), ("--threads", args.threads), ("--scheduler", args.scheduler),
                        ("--tile", args.tile)):
        if value is not None:
            cmd += [flag, str(value)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    peak = mem.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"embedding {cube} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    info = json.loads(stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    pixel_dates = info["height"] * info["width"] * info["n_time"]
    valid = _valid_fraction(emb)
    if not args.keep:
        shutil.rmtree(emb, ignore_errors=True)
    return {
        "size": size, "zarr_format": zarr_format, "n_time": info["n_time"], "pixel_dates": pixel_dates, "seconds": info["seconds"],
        "process_seconds": wall, "pixel_dates_per_s": pixel_dates / info["seconds"], "cpu_seconds": cpu,
        "pixel_dates_per_cpu_s": pixel_dates / cpu if cpu else None, "peak_rss_tree_gib": peak / GIB,
        "peak_rss_largest_process_gib": mem.peak_process / GIB, "processes": mem.n_processes, "rss_method": mem.method,
        "valid_fraction": valid,
    }


def _valid_fraction(emb: Path) -> float:
    """Share of pixel-dates with an embedding (centre pixel valid), read after the measured run.

    ``embed_cube`` skips the temporal layers' work for targets whose centre pixel is invalid wherever a
    whole pixel chunk is invalid (cloudy dates), so throughput depends on it: report it next to the rate.
    """
    import dask
    import xarray as xr

    with dask.config.set(scheduler="synchronous"):  # one chunk at a time
        first = xr.open_zarr(emb)["embedding"].isel(feature=0)
        return float(first.notnull().mean().compute())


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 512], help="cube edges in pixels (default 1024 512)")
    ap.add_argument("--quality", action="store_true", help="also write the quality layer")
    ap.add_argument("--blank-dates", type=float, default=0.0,
                    help="share of S2 dates with no data at all (wholly cloudy dates kept by masked exports)")
    ap.add_argument("--out", type=Path, help="write the results (and settings) to this JSON file")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/latentcube-bench-embed"),
                    help="cubes (cached), model and outputs")
    ap.add_argument("--checkpoint", type=Path, help="a model file (default: random-weight full-size fusion model)")
    ap.add_argument("--block-px", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workers", type=int, help="LocalCluster workers (default: embed_cube's)")
    ap.add_argument("--threads", type=int, help="torch threads per worker (default: embed_cube's)")
    ap.add_argument("--scheduler", help="'synchronous' or a scheduler address (default: a LocalCluster)")
    ap.add_argument("--tile", help="encoder tile edge in pixels (default: embed_cube's 'auto')")
    ap.add_argument("--threaded", action="store_true",
                    help="LocalCluster workers as threads of one process (embed_cube(processes=False))")
    ap.add_argument("--keep", action="store_true", help="keep the embedding stores")
    ap.add_argument("--zarr-format", type=int, nargs="+", default=[3], choices=[2, 3],
                    help="Zarr format of the cube and the store; several: run each in turn per size (e.g. 2 3 2 3)")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cube", help=argparse.SUPPRESS)
    ap.add_argument("--emb", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(args)
        return []
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.checkpoint or build_model(args.workdir / "model_random.pt")
    rows = [run_one(size, args, model, fmt) for size in args.sizes for fmt in args.zarr_format]

    print(f"embed_cube end to end: {platform.node()}, {os.cpu_count()} CPUs, block {args.block_px}, dtype {args.dtype}, "
          f"quality {'on' if args.quality else 'off'}, blank S2 dates {args.blank_dates:.0%}, model {'random weights' if args.checkpoint is None else model}")
    header = f"{'size':>6} {'zarr':>4} {'dates':>5} {'pixel-dates':>12} {'seconds':>8} {'px-d/s':>9} {'CPU s':>8} {'px-d/CPU-s':>10} " \
             f"{'peak RSS GiB':>12} {'max proc GiB':>12} {'valid':>6}"
    print(header)
    for r in rows:
        print(f"{r['size']:>6} {r['zarr_format']:>4} {r['n_time']:>5} {r['pixel_dates']:>12,} {r['seconds']:>8.1f} {r['pixel_dates_per_s']:>9,.0f} "
              f"{r['cpu_seconds']:>8.1f} {r['pixel_dates_per_cpu_s'] or 0:>10,.0f} {r['peak_rss_tree_gib']:>12.2f} "
              f"{r['peak_rss_largest_process_gib']:>12.2f} {r['valid_fraction']:>6.1%}")
    big = max(rows, key=lambda r: r["size"])
    small = min(rows, key=lambda r: r["size"])
    ratio = big["peak_rss_tree_gib"] / small["peak_rss_tree_gib"] if small["peak_rss_tree_gib"] else float("nan")
    if big["size"] != small["size"]:
        print(f"peak RSS ratio {big['size']} / {small['size']} px: {ratio:.2f} (cube area ratio "
              f"{(big['size'] / small['size']) ** 2:.0f})")
    if {2, 3} <= {r["zarr_format"] for r in rows}:
        for size in args.sizes:
            mean = {fmt: {key: sum(r[key] for r in rows if r["size"] == size and r["zarr_format"] == fmt)
                          / sum(1 for r in rows if r["size"] == size and r["zarr_format"] == fmt)
                          for key in ("pixel_dates_per_s", "pixel_dates_per_cpu_s")} for fmt in (2, 3)}
            print(f"{size} px, Zarr v3 / format 2 (means of the runs): pixel-dates/s "
                  f"{mean[3]['pixel_dates_per_s'] / mean[2]['pixel_dates_per_s']:.3f}, pixel-dates per CPU-s "
                  f"{mean[3]['pixel_dates_per_cpu_s'] / mean[2]['pixel_dates_per_cpu_s']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
        args.out.write_text(json.dumps({"settings": settings, "results": rows, "memory_ratio": ratio,
                                        "cpus": os.cpu_count(), "host": platform.node()}, indent=1))
    return rows


if __name__ == "__main__":
    main()
