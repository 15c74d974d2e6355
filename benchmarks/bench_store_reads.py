"""Reads of an embedding store by layout: unsharded chunks (Zarr format 2 and v3 without shards) vs the
sharded v3 layout of ``latentcube embed`` (one shard per block, 8-date inner chunks).

Writes one synthetic float32 store per layout (``--size`` pixels square, ``--dates`` dates, 7 features,
69 % of the pixel-dates invalid as in the synthetic year, block ``--block`` pixels; ~0.5 GB raw at the
defaults) and times, per layout, in this order:

* the write (``latentcube.stores.write_zarr``, in process, from memory);
* a one-date map (``open_embedding(store).isel(time=...)``);
* 1,000 random points, every date (``sample_embeddings(..., series=True)``) and one date;
* the mean of the whole store (every chunk read once).

Also the number of Dask tasks of ``open_embedding`` (its default chunks are the storage / inner chunks).
The layouts run in the order given, so ``--layouts v3 sharded v3 sharded`` alternates them.

    python benchmarks/bench_store_reads.py
    python benchmarks/bench_store_reads.py --size 512 --dates 73 --layouts v2 sharded v2 sharded
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

LAYOUTS = ("v2", "v3", "sharded")


def build(size: int, n_time: int, n_feat: int = 7, seed: int = 0):
    import numpy as np
    import pandas as pd
    import xarray as xr

    from latentcube.cube import set_crs

    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_time, n_feat, size, size)).astype("float32")
    v[np.repeat(rng.random((n_time, 1, size, size)) < 0.69, n_feat, axis=1)] = np.nan
    ds = xr.Dataset(
        {"embedding": (("time", "feature", "y", "x"), v)},
        coords={"time": pd.date_range("2019-01-03", periods=n_time, freq="5D"),
                "feature": [f"fused_{i}" for i in range(n_feat)],
                "y": 5e6 - 10 * np.arange(size) - 5, "x": 6e5 + 10 * np.arange(size) + 5},
        attrs={"conventions": "latentcube embedding cube v1 (docs/embed.md)"},
    )
    return set_crs(ds, "EPSG:32632")


def run(layout: str, ds, path: Path, points: Path, block: int) -> dict:
    from latentcube.embed import open_embedding
    from latentcube.embed._store import MAX_TIME_CHUNK
    from latentcube.sample_points import sample_embeddings
    from latentcube.stores import block_encoding, write_zarr

    t, f = min(ds.sizes["time"], MAX_TIME_CHUNK), ds.sizes["feature"]
    chunk = (t, f, min(block, ds.sizes["y"]), min(block, ds.sizes["x"]))
    fmt = 2 if layout == "v2" else 3
    encoding = block_encoding(chunk, zarr_format=fmt) if layout == "sharded" else {"chunks": chunk}
    shutil.rmtree(path, ignore_errors=True)
    out = {"layout": layout, "encoding": {k: list(v) for k, v in encoding.items()}}
    t0 = time.perf_counter()
    write_zarr(ds, path, encoding={"embedding": encoding}, zarr_format=fmt)
    out["write_s"] = time.perf_counter() - t0
    emb = open_embedding(path)
    out["dask_tasks"] = len(emb.data.__dask_graph__())
    t0 = time.perf_counter()
    emb.isel(time=ds.sizes["time"] // 2).compute()
    out["one_date_map_s"] = time.perf_counter() - t0
    date = str(ds["time"].values[ds.sizes["time"] // 2])[:10]
    t0 = time.perf_counter()
    sample_embeddings(path, points, crs="EPSG:32632", series=True, progress=False)
    out["points_series_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample_embeddings(path, points, crs="EPSG:32632", dates=[date], progress=False)
    out["points_one_date_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    float(emb.mean().compute())
    out["whole_store_mean_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    import numpy as np
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dates", type=int, default=73)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["v2", "sharded", "v2", "sharded"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/latentcube-bench-store-reads"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ds = build(args.size, args.dates)
    rng = np.random.default_rng(1)
    points = args.workdir / "points.csv"
    pd.DataFrame({"x": 6e5 + 10 * rng.integers(0, args.size, args.points) + 5,
                  "y": 5e6 - 10 * rng.integers(0, args.size, args.points) - 5}).to_csv(points, index=False)
    print(f"store {args.size}^2 x {args.dates} dates x 7 features float32, block {args.block}, {args.points} points")
    print(f"{'layout':>8} {'write s':>8} {'tasks':>6} {'map s':>7} {'pts all s':>9} {'pts 1 s':>8} {'mean s':>7}")
    rows = []
    for layout in args.layouts:
        r = run(layout, ds, args.workdir / f"{layout}.zarr", points, args.block)
        rows.append(r)
        print(f"{layout:>8} {r['write_s']:>8.2f} {r['dask_tasks']:>6} {r['one_date_map_s']:>7.2f} "
              f"{r['points_series_s']:>9.2f} {r['points_one_date_s']:>8.2f} {r['whole_store_mean_s']:>7.2f}",
              flush=True)
    for layout in LAYOUTS:
        shutil.rmtree(args.workdir / f"{layout}.zarr", ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
